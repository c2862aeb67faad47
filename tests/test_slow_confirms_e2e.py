"""Late publisher confirms (a slow disk) hold up acknowledgements, not dispatch.

The leader acknowledges a turn's messages only once RabbitMQ has confirmed what the turn
published, but it starts the next turn as soon as this one has committed (docs/design.md,
section 4). Seen with bench/dispatch.py --confirm-delay: while the leader stopped at 16 turns
waiting for confirms, at a steady 200 tasks/s (a turn or two per task) confirms 100 ms late
made p99 submit-to-worker 120 ms. Now the bound counts messages. The mesh here talks to
RabbitMQ through a proxy that holds its confirms back; bots and producers talk to RabbitMQ
directly. The leader's workmesh_dispatch_confirm_seconds shows how late they come.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from rabbitmq.topology import INTAKE_QUEUE
from tests.amqp_proxy import ConfirmProxy
from tests.bots import Producer
from tests.conftest import RABBIT_HOST, Harness, eventually
from tests.test_metrics_e2e import scrape, value
from workmesh.engine import cycle


@pytest.fixture
async def proxy(harness: Harness) -> AsyncIterator[ConfirmProxy]:
    """The harness's mesh (not yet started) set to reach RabbitMQ through the proxy."""
    proxy = ConfirmProxy(RABBIT_HOST, 5672)
    port = await proxy.start()
    direct = harness.amqp_url
    harness.amqp_url = direct.replace(f"@{RABBIT_HOST}:5672/", f"@127.0.0.1:{port}/")
    try:
        yield proxy
    finally:
        harness.amqp_url = direct
        await harness.close()  # the mesh first, or it would reconnect through a closed proxy
        harness.meshes.clear()
        harness.bots.clear()
        await proxy.close()


async def test_dispatch_goes_on_while_confirms_are_held_back(
    harness: Harness, proxy: ConfirmProxy, amqp_url: str
) -> None:
    tasks = 40  # one at a time: 40 turns and their reports', far more than 16
    await harness.start()
    harness.amqp_url = amqp_url  # bots and producers go to RabbitMQ directly
    bot = await harness.bot("w", capacity=4)
    await harness.wait_online("w")
    token = await harness.producer_token()

    # Given RabbitMQ's confirms held back from the mesh from now on
    proxy.hold()
    async with Producer(amqp_url, token) as producer:
        # When tasks arrive one at a time, each after the last one reached the worker
        for n in range(tasks):
            await producer.submit(payload={"n": n})
            await eventually(
                lambda n=n: len(bot.received) == n + 1,  # type: ignore[misc]
                message=f"task {n} assigned while confirms are held back",
            )
    # Then every one reached the worker, though no assignment was confirmed yet
    assert proxy.held_confirms > 0
    assert [r.payload["n"] for r in bot.received] == list(range(tasks))
    # and no intake message was acknowledged before its assignment's confirm
    assert await intake_count(amqp_url, "messages_unacknowledged") == tasks

    # When the confirms come, the turns settle: the intake queue is empty, all are done
    proxy.release()
    await eventually(intake_empty(amqp_url), message="intake acknowledged after the confirms")
    _, stats = await harness.api("GET", "/api/v1/stats")
    assert stats["tasks"]["done"] == tasks


async def test_past_its_bound_the_leader_waits_for_confirms(
    harness: Harness, proxy: ConfirmProxy, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = 6  # messages: each task here is two, itself and its worker's task.started
    monkeypatch.setattr(cycle, "MAX_UNSETTLED_MESSAGES", bound)
    await harness.start(heartbeat_timeout=60.0)
    harness.amqp_url = amqp_url
    bot = await harness.bot("w", capacity=10, mode="hold")  # starts its tasks, holds them
    await harness.wait_online("w")
    bot.beating = False  # heartbeats are reports too: only the tasks count here

    proxy.hold()
    async with Producer(amqp_url, token=await harness.producer_token()) as producer:
        # When tasks come one at a time with confirms held back, each started before the next
        for n in range(bound // 2):
            task_id = await producer.submit(payload={"n": n})
            await harness.wait_task(task_id, f"task {n} started", status="in_progress")
        # Then past the bound of unsettled messages the next one waits, room or not
        await producer.submit(payload={"n": bound // 2})
        await asyncio.sleep(1.0)
        assert [r.payload["n"] for r in bot.received] == list(range(bound // 2))

        # and goes out once the confirms come
        proxy.release()
        await eventually(
            lambda: len(bot.received) == bound // 2 + 1, message="the task that waited"
        )
    await bot.finish_all()
    await eventually(intake_empty(amqp_url), message="intake acknowledged after the confirms")


async def test_the_leader_measures_how_late_confirms_come(
    harness: Harness, proxy: ConfirmProxy, amqp_url: str
) -> None:
    # Given confirms that reach the mesh 200 ms late (a slow disk)
    proxy.delay = 0.2
    mesh = await harness.start()
    harness.amqp_url = amqp_url
    bot = await harness.bot("w", capacity=2)
    await harness.wait_online("w")
    # When tasks are dispatched
    async with Producer(amqp_url, token=await harness.producer_token()) as producer:
        for _ in range(3):
            await producer.submit()
    await eventually(lambda: len(bot.received) == 3, message="three dispatched")
    await eventually(intake_empty(amqp_url), message="intake acknowledged after the confirms")
    # Then the metric of the turns' wait for confirms shows it: none under 100 ms
    samples = await scrape(harness, mesh.settings.http.port)
    turns = value(samples, "workmesh_dispatch_confirm_seconds_count")
    assert 1 <= turns <= 3
    assert value(samples, "workmesh_dispatch_confirm_seconds_bucket", le="0.1") == 0
    assert value(samples, "workmesh_dispatch_confirm_seconds_sum") >= 0.2 * turns


def intake_empty(amqp_url: str) -> Callable[[], Awaitable[bool]]:
    async def empty() -> bool:
        return await intake_count(amqp_url, "messages") == 0

    return empty


async def intake_count(amqp_url: str, column: str) -> int:
    """A column of ``rabbitmqctl list_queues`` for the intake queue (asked of the queue
    itself, not of the management plugin's sampled statistics)."""
    vhost = amqp_url.rsplit("/", 1)[1]
    process = await asyncio.create_subprocess_exec(
        *("rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers", "name", column),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    for line in out.decode().splitlines():
        name, _, count = line.partition("\t")
        if name == INTAKE_QUEUE:
            return int(count)
    raise AssertionError(f"{INTAKE_QUEUE} not listed in vhost {vhost}")
