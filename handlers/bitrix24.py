"""Reception events (``reception.upserted`` on workmesh.events) into the Bitrix24 sync."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from faststream.middlewares import AckPolicy
from faststream.rabbit import (
    Channel,
    ExchangeType,
    RabbitExchange,
    RabbitMessage,
    RabbitQueue,
    RabbitRouter,
)
from faststream.rabbit.message import RabbitMessage as IncomingReception

from brokers.errors import Unprocessable
from rabbitmq.topology import DEAD_EXCHANGE, EVENTS_EXCHANGE
from schemas.receptions import Reception

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs

RECEPTIONS_QUEUE = "workmesh.bitrix24.receptions"
RECEPTION_KEY = "reception.upserted"

RECEPTIONS_ARGUMENTS = {
    "x-dead-letter-exchange": DEAD_EXCHANGE,
    # One consumer at a time across processes: the sync keeps two batches from creating the
    # same contact by holding each phone and ident_id in one process; a second process
    # waits as a hot standby and takes over when the first goes.
    "x-single-active-consumer": True,
}


def receptions_queue() -> RabbitQueue:
    return RabbitQueue(
        RECEPTIONS_QUEUE,
        durable=True,
        routing_key=RECEPTION_KEY,
        arguments=cast("ClassicQueueArgs", RECEPTIONS_ARGUMENTS),
    )


ReceptionHandler = Callable[[Reception, IncomingReception], Awaitable[None]]


def decode_json(message: IncomingReception) -> Any:
    """The body as JSON; a body that is not JSON can never be a reception: dead-letter it."""
    try:
        return json.loads(message.body)
    except ValueError as error:
        raise Unprocessable(f"invalid message: the body is not JSON ({error})") from error


def build_bitrix24_router(handle: ReceptionHandler, prefetch: int) -> RabbitRouter:
    router = RabbitRouter()

    @router.subscriber(
        receptions_queue(),
        RabbitExchange(EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True, declare=False),
        # Enough unacknowledged records to fill every batch in flight: each waits for the
        # commit of its batch before it is acknowledged.
        channel=Channel(prefetch_count=prefetch),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=decode_json,
    )
    async def on_reception(body: Reception, message: RabbitMessage) -> None:
        await handle(body, message)

    return router
