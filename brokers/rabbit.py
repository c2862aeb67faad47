"""Build the FastStream RabbitMQ broker: routers, Prometheus middleware, dead-lettering."""

from __future__ import annotations

import logging

from faststream.rabbit import RabbitBroker
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from brokers.errors import DeadLetterMiddleware
from handlers.workers import build_workers_router
from workmesh.metrics import Metrics
from workmesh.settings import Settings


def build_broker(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    metrics: Metrics,
    *,
    consume: bool = True,
) -> RabbitBroker:
    """The broker for one process. ``consume=False`` builds a publish-only broker (the api role)."""
    broker = RabbitBroker(
        settings.amqp.url,
        # Every heartbeat is a message; an access line for each would drown the log.
        log_level=logging.DEBUG,
        middlewares=(
            RabbitPrometheusMiddleware(registry=metrics.registry, app_name="workmesh"),
            DeadLetterMiddleware,
        ),
    )
    if consume:
        broker.include_router(build_workers_router(sessions))
    return broker
