"""Delayed delivery through TTL queues on the real broker."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest
from faststream.rabbit import RabbitBroker, RabbitQueue

from workmesh.delays import Delays


@pytest.mark.e2e
async def test_messages_arrive_after_their_delay_in_order(amqp_url: str) -> None:
    broker = RabbitBroker(amqp_url)
    async with broker:
        await broker.start()
        await broker.declare_queue(RabbitQueue("test.later", durable=True))
        delays = Delays(broker)
        sent = time.monotonic()
        await delays.publish_later({"n": 2}, queue="test.later", delay=0.6, message_id="two")
        await delays.publish_later({"n": 1}, queue="test.later", delay=0.3, message_id="one")
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            queue = await (await connection.channel()).get_queue("test.later")
            arrived: list[tuple[str | None, float]] = []
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    arrived.append((message.message_id, time.monotonic() - sent))
                    if len(arrived) == 2:
                        break
    assert [m for m, _ in arrived] == ["one", "two"]
    # Not before its time (RabbitMQ may be a little late, never early).
    assert arrived[0][1] >= 0.3
    assert arrived[1][1] >= 0.6


@pytest.mark.e2e
async def test_pending_messages_wait_in_rabbitmq_not_in_the_process(amqp_url: str) -> None:
    broker = RabbitBroker(amqp_url)
    async with broker:
        await broker.start()
        await broker.declare_queue(RabbitQueue("test.later", durable=True))
        await Delays(broker).publish_later(b"x", queue="test.later", delay=30)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        waiting = await channel.declare_queue("test.later.delay.30000ms", passive=True)
        assert waiting.declaration_result.message_count == 1


def test_a_delay_must_be_positive() -> None:
    with pytest.raises(ValueError, match="a delay must be positive"):
        asyncio.run(Delays(RabbitBroker()).declare("q", 0))
