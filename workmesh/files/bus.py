"""Publishing for the HTTP side: announcements to ``workmesh.events`` through the mesh's
FastStream broker (publisher confirms). The rotation chain's delay queue is bound to the key
events, so announcing a new key is also the first message of its chain."""

from __future__ import annotations

import uuid

from faststream.rabbit import RabbitBroker, RabbitExchange

from rabbitmq.topology import EVENTS_EXCHANGE
from workmesh.delays import Delays
from workmesh.files.events import Announcement

EVENTS = RabbitExchange(EVENTS_EXCHANGE, declare=False)
ROTATE_QUEUE = "workmesh.files.rotate"
# The events that carry a key and its next renewal time: each is the next link of its chain.
CHAIN_KEYS = ("file.refer.issued", "file.refer.renewed")


class FilesBus:
    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker
        self.delays = Delays(broker)

    async def announce(self, announcements: list[Announcement]) -> None:
        for a in announcements:
            await self.broker.publish(
                a.encoded(),
                exchange=EVENTS,
                routing_key=a.routing_key,
                persist=True,
                content_type="application/json",
                message_id=uuid.uuid4().hex,
            )
