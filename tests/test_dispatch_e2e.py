"""The dispatcher end to end: real RabbitMQ, a real database, bots in plain aio-pika."""

from __future__ import annotations

import asyncio

from tests.bots import Producer
from tests.conftest import Harness, eventually


async def task_status(harness: Harness, task_id: str) -> str:
    status, body = await harness.api("GET", f"/api/v1/tasks/{task_id}")
    assert status == 200, body
    return str(body["status"])


async def test_even_spread_over_active_workers(harness: Harness) -> None:
    # Given three active workers that hold what they get
    await harness.start()
    bots = [await harness.bot(f"bot-{i}", capacity=4, mode="hold") for i in range(3)]
    token = await harness.producer_token()
    await harness.wait_online(*(b.worker_id for b in bots))
    # When nine tasks arrive
    async with Producer(harness.amqp_url, token) as producer:
        ids = [await producer.submit() for _ in range(9)]
    # Then each worker holds three: least load never lets one get ahead by more than one
    await eventually(lambda: sum(b.load for b in bots) == 9, message="nine tasks held")
    assert [b.load for b in bots] == [3, 3, 3]
    for task_id in ids:
        assert await task_status(harness, task_id) == "in_progress"
    # And when they finish, every task is done
    for bot in bots:
        await bot.finish_all()

    async def all_done() -> bool:
        return all([await task_status(harness, t) == "done" for t in ids])

    await eventually(all_done, message="all tasks done")
    _, stats = await harness.api("GET", "/api/v1/stats")
    assert stats["tasks"]["done"] == 9
    assert stats["workers"]["load"] == 0
    await asyncio.sleep(0)
