"""The most recent dead letters, as this api process saw them.

Each api process binds a queue of its own to the ``workmesh.dead`` fanout exchange: exclusive
(nobody else reads it), auto-deleted (it goes with the process) and not durable. A fanout
exchange copies every message to every bound queue, so this changes nothing for the
operators' durable ``workmesh.dead`` queue, which keeps every dead letter until an operator
moves it (``workmesh dead move``). The copy here is only a window: the last ``KEEP`` dead
letters since this process started.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from faststream.middlewares import AckPolicy
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

from rabbitmq.topology import DEAD_EXCHANGE, TOKEN_HEADER
from workmesh.dead import SOURCE_HEADER, reason_of, text

log = logging.getLogger(__name__)

KEEP = 50
BODY_CHARS = 2000  # enough to recognise a message; the whole one is in workmesh.dead

DEAD = RabbitExchange(DEAD_EXCHANGE, type=ExchangeType.FANOUT, durable=True, declare=False)


class DeadLetterLog:
    def __init__(self, keep: int = KEEP) -> None:
        self.since = datetime.now(UTC)
        self.keep = keep
        self.queue_name = f"workmesh.ops.dead.{uuid.uuid4().hex[:12]}"
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)

    def subscribe(self, broker: RabbitBroker) -> None:
        @broker.subscriber(
            RabbitQueue(self.queue_name, durable=False, exclusive=True, auto_delete=True),
            exchange=DEAD,
            # One at a time, so the window keeps the order they were dead-lettered in
            # (aio-pika runs the handlers of prefetched messages side by side).
            channel=Channel(prefetch_count=1),
            # A copy for display: one lost with the process loses nothing, so acknowledged
            # whatever happens.
            ack_policy=AckPolicy.ACK,
        )
        async def on_dead_letter(message: RabbitMessage) -> None:
            # Never raise: a failed handler is dead-lettered, and this queue reads dead letters.
            try:
                self.record(message.raw_message.body, dict(message.raw_message.headers or {}))
            except Exception:
                log.exception("a dead letter could not be recorded for the overview")

    def record(self, body: bytes, headers: dict[str, Any]) -> None:
        headers.pop(TOKEN_HEADER, None)  # never show a token, should one have come along
        self._recent.appendleft(
            {
                "at": datetime.now(UTC).isoformat(),
                "reason": reason_of(headers),
                "source": text(headers.get(SOURCE_HEADER)),
                "task_id": _task_id(body),
                "body": body[:BODY_CHARS].decode("utf-8", errors="replace"),
                "truncated": len(body) > BODY_CHARS,
            }
        )

    def view(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "keep": self.keep,
            "recent": list(self._recent),
        }


def _task_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        for key in ("task_id", "id"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return None


DEAD_LETTERS = web.AppKey("dead_letters", DeadLetterLog)
