"""Two dispatchers at once, a leader that dies, and a connection that drops."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter

from tests.bots import Producer
from tests.conftest import Harness, eventually
from workmesh.engine.leader import cancel_and_wait
from workmesh.runtime import Role


async def test_two_dispatchers_never_double_assign_and_the_standby_takes_over(
    harness: Harness,
) -> None:
    # Given two dispatcher processes' worth of mesh on one database and one RabbitMQ
    first = await harness.start(Role.ALL)
    second = await harness.start(Role.DISPATCHER)
    one, two = first.dispatcher, second.dispatcher
    assert one is not None
    assert two is not None
    await eventually(lambda: one.leading.is_set() or two.leading.is_set(), message="a leader")
    assert not (one.leading.is_set() and two.leading.is_set())
    bots = [await harness.bot(f"b{i}", capacity=3, mode="done") for i in range(3)]
    await harness.wait_online(*(b.worker_id for b in bots))
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        ids = [await producer.submit() for _ in range(150)]
        await eventually(lambda: sum(len(b.received) for b in bots) >= 60, message="work started")
        # When the leader stops in the middle of it
        leader = first if one.leading.is_set() else second
        standby = two if leader is first else one
        assert leader.dispatcher_task is not None
        leader.dispatcher_task.cancel()
        await asyncio.wait_for(
            asyncio.gather(leader.dispatcher_task, return_exceptions=True), timeout=10
        )
        await eventually(lambda: standby.leading.is_set(), message="standby leads")
        ids += [await producer.submit() for _ in range(50)]
    # Then every task is delivered, and none was assigned twice
    await eventually(
        lambda: sum(len(b.received) for b in bots) >= len(ids), timeout=20, message="all delivered"
    )
    await asyncio.sleep(0.5)
    delivered = Counter(t for b in bots for t in b.task_ids())
    assert set(delivered) == set(ids)
    twice = [t for t, n in delivered.items() if n > 1]
    # A task is sent again only if the leader died between its commit and its acknowledgement
    # (at-least-once); that window holds one batch at most. Two leaders at once would instead
    # double a large share of all 200.
    assert len(twice) <= 10, twice

    async def all_done() -> bool:
        _, stats = await harness.api("GET", "/api/v1/stats")
        return bool(stats["tasks"]["done"] == len(ids))

    await eventually(all_done, message="all done")


async def test_the_dispatcher_comes_back_after_losing_rabbitmq(harness: Harness) -> None:
    mesh = await harness.start()
    dispatcher = mesh.dispatcher
    assert dispatcher is not None
    bot = await harness.bot("b", capacity=2, mode="done")
    await harness.wait_online("b")
    vhost = harness.amqp_url.rsplit("/", 1)[1]
    # When RabbitMQ drops every connection of this vhost (as a broker restart would)
    await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test restart"],
        check=True,
        capture_output=True,
    )
    await eventually(lambda: not dispatcher.leading.is_set(), message="leader lost")
    await eventually(lambda: dispatcher.leading.is_set(), timeout=15, message="leads again")
    await bot.stop()
    bot = await harness.bot("b2", capacity=2, mode="done")
    await harness.wait_online("b2")
    # Then tasks flow again, over the HTTP API (FastStream reconnects) and AMQP alike
    status, body = await harness.api("POST", "/api/v1/tasks", json={"kind": "after"})
    assert status in (201, 202)
    await eventually(lambda: body["id"] in bot.task_ids(), timeout=15, message="delivered")


async def test_a_new_leader_returns_the_tasks_of_a_worker_that_died_before_it_took_over(
    harness: Harness,
) -> None:
    # Given a leader that saw a worker online and gave it a task
    first = await harness.start(heartbeat_timeout=1.0)
    bot = await harness.bot("doomed", capacity=1, mode="silent")
    await harness.wait_online("doomed")
    status, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    assert status == 201
    await eventually(lambda: len(bot.received) == 1, message="delivered")
    # When the worker dies and the leader goes away before noticing
    bot.beating = False
    assert first.dispatcher_task is not None
    await cancel_and_wait(first.dispatcher_task)
    await asyncio.sleep(1.2)
    # Then the next leader, which never saw it alive, still finds it gone and hands the task on
    second = await harness.start(Role.DISPATCHER, heartbeat_timeout=1.0)
    assert second.dispatcher is not None
    rescuer = await harness.bot("rescuer", capacity=1, mode="done")
    await eventually(
        lambda: rescuer.task_ids() == [task["id"]], timeout=15, message="task handed to the rescuer"
    )
