"""Fixtures: a fake Bitrix24 portal, settings that keep our client within its limits, and
helpers that publish reception events and read dead letters through the real RabbitMQ."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest

from handlers.bitrix24 import RECEPTION_KEY
from rabbitmq.topology import DEAD_QUEUE, EVENTS_EXCHANGE
from tests.bitrix24.fake import FakeBitrix24, FakeLimits
from workmesh.bitrix24 import Bitrix24Settings

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBitrix24]:
    portal = FakeBitrix24(limits=FakeLimits(bucket_capacity=20, bucket_drain=40.0))
    await portal.start()
    yield portal
    await portal.stop()


def fast_settings(fake: FakeBitrix24, **overrides: Any) -> Bitrix24Settings:
    """The fake's limits, short waits: what a test needs to finish quickly."""
    values: dict[str, Any] = {
        "webhook_url": fake.webhook_url,
        "bucket_capacity": fake.limits.bucket_capacity,
        "bucket_drain": fake.limits.bucket_drain,
        "bucket_margin": 2,
        "operating_limit": fake.limits.operating_limit,
        "flush_timeout": 0.1,
        "retry_waits": [0.05, 0.1, 0.2],
        "retry_delay": 0.3,
        "operating_pause": 0.5,
    }
    values.update(overrides)
    return Bitrix24Settings(**values)


def reception(ident: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ident_id": ident,
        "phone": f"+7 900 {int(ident.split('-')[-1]) % 10_000_000:07d}",
        "patient_name": f"Patient {ident}",
        "starts_at": (T0 + timedelta(hours=1)).isoformat(),
        "status": "scheduled",
        "comment": f"first visit of {ident}",
        "updated_at": T0.isoformat(),
    }
    body.update(fields)
    return body


async def publish(amqp_url: str, *bodies: dict[str, Any] | bytes) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        for body in bodies:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            await exchange.publish(
                aio_pika.Message(
                    raw,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=RECEPTION_KEY,
            )


async def dead_letters(amqp_url: str) -> list[tuple[bytes, str]]:
    """Everything in workmesh.dead now: (body, reason)."""
    found = []
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(DEAD_QUEUE)
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            found.append((message.body, str((message.headers or {}).get("x-workmesh-reason"))))
    return found
