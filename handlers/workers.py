"""Worker heartbeats over AMQP (``worker.heartbeat`` on workmesh.events)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from faststream.middlewares import AckPolicy
from faststream.rabbit import RabbitMessage, RabbitQueue, RabbitRouter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from brokers.errors import Unprocessable
from rabbitmq.topology import HEARTBEATS, TOKEN_HEADER
from schemas.workers import Heartbeat
from workmesh.services import workers

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs


def build_workers_router(sessions: async_sessionmaker[AsyncSession]) -> RabbitRouter:
    router = RabbitRouter()

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
        token = message.headers.get(TOKEN_HEADER)
        async with sessions() as session, session.begin():
            try:
                await workers.record_authenticated_heartbeat(session, body.worker_id, token)
            except (workers.UnknownWorker, PermissionError) as error:
                raise Unprocessable(str(error)) from error

    return router
