""" "Never will succeed" versus "retry later", decided once for every FastStream handler.

A message that fails validation, or whose handler raises ``Unprocessable``, is published to
``workmesh.dead`` with the reason in a header and acknowledged; any other error leaves it to
the acknowledgement policy (nack and requeue: the database may be back in a moment).
"""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
from fast_depends.exceptions import ValidationError as InjectionValidationError
from faststream import BaseMiddleware, StreamMessage
from faststream.rabbit import RabbitExchange
from pydantic import ValidationError

from rabbitmq.topology import DEAD_EXCHANGE, REASON_HEADER, TOKEN_HEADER

log = logging.getLogger(__name__)


class Unprocessable(Exception):
    """Raised by a handler for a message that can never be processed; the text says why."""


class DeadLetterMiddleware(BaseMiddleware):
    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        try:
            return await call_next(msg)
        except (ValidationError, InjectionValidationError) as error:
            await self._dead_letter(msg, f"invalid message: {_first_line(error)}")
        except Unprocessable as error:
            await self._dead_letter(msg, str(error))
        return None

    async def _dead_letter(self, msg: StreamMessage[Any], reason: str) -> None:
        raw: aio_pika.abc.AbstractIncomingMessage = msg.raw_message
        headers = {k: v for k, v in (raw.headers or {}).items() if k != TOKEN_HEADER}
        headers.update({REASON_HEADER: reason, "x-workmesh-source": raw.routing_key or ""})
        broker = self.context.get("broker")
        await broker.publish(
            raw.body,
            exchange=RabbitExchange(DEAD_EXCHANGE, declare=False),
            routing_key=raw.routing_key or "",
            headers=headers,
            persist=True,
            content_type=raw.content_type,
        )
        log.warning("dead-lettered a message from %s: %s", raw.routing_key, reason)
        await msg.ack()


def _first_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()[:5]
        )
    return str(error).splitlines()[0] if str(error) else type(error).__name__
