"""Worker heartbeats over AMQP (``worker.heartbeat`` on workmesh.events)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from faststream.middlewares import AckPolicy
from faststream.rabbit import RabbitMessage, RabbitQueue, RabbitRouter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from brokers.errors import Unprocessable
from rabbitmq.topology import HEARTBEATS, TOKEN_HEADER
from schemas.workers import Heartbeat
from workmesh.services.heartbeats import HeartbeatBook
from workmesh.services.workers import UnknownWorker

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs


def build_workers_router(sessions: async_sessionmaker[AsyncSession]) -> RabbitRouter:
    router = RabbitRouter()
    book = HeartbeatBook(sessions)

    @router.subscriber(
        # Declared and bound with the rest of the topology (rabbitmq/topology.py).
        RabbitQueue(
            HEARTBEATS.name,
            durable=True,
            arguments=cast("ClassicQueueArgs", HEARTBEATS.arguments),
            declare=False,
        ),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_heartbeat(body: Heartbeat, message: RabbitMessage) -> None:
        try:
            await book.record(body.worker_id, message.headers.get(TOKEN_HEADER))
        except (UnknownWorker, PermissionError) as error:
            raise Unprocessable(str(error)) from error

    return router
