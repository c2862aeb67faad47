"""The topology the mesh declares, as RabbitMQ itself reports it."""

from __future__ import annotations

import asyncio
import subprocess

from tests.conftest import Harness


async def list_queues(vhost: str) -> dict[str, tuple[bool, str]]:
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "rabbitmqctl",
            "-q",
            "--no-table-headers",
            "list_queues",
            "-p",
            vhost,
            "name",
            "durable",
            "arguments",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    queues = {}
    for line in result.stdout.splitlines():
        name, durable, arguments = line.split("\t", 2)
        queues[name] = (durable == "true", arguments)
    return queues


async def test_every_work_queue_is_durable_and_dead_letters(harness: Harness) -> None:
    await harness.start(retry_delays=[0.5, 2.0])
    await harness.add_worker("w1")
    vhost = harness.amqp_url.rsplit("/", 1)[1]
    queues = await list_queues(vhost)
    work = [
        "workmesh.tasks.intake",
        "workmesh.worker.w1",
        "workmesh.dispatcher.reports",
        "workmesh.tasks.retry.500ms",
        "workmesh.tasks.retry.2000ms",
    ]
    for name in work:
        durable, arguments = queues[name]
        assert durable, name
        assert "x-dead-letter-exchange" in arguments, (name, arguments)
    intake = queues["workmesh.tasks.intake"][1]
    assert '{"x-max-priority",9}' in intake.replace(" ", "")
    assert '{"x-dead-letter-exchange","workmesh.dead"}' in intake.replace(" ", "")
    retry = queues["workmesh.tasks.retry.500ms"][1].replace(" ", "")
    assert '{"x-message-ttl",500}' in retry
    assert '{"x-dead-letter-exchange","workmesh.tasks"}' in retry
    assert '{"x-dead-letter-routing-key","submit"}' in retry
    # Stale heartbeats expire quietly; the dead-letter queue itself is where things end
    assert '{"x-message-ttl",60000}' in queues["workmesh.dispatcher.heartbeats"][1].replace(" ", "")
    assert queues["workmesh.dead"][0]
