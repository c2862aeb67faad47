"""The workmesh command as an operator uses it: help, workers, tokens, submit, stats."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aio_pika

from tests.conftest import ADMIN_TOKEN, Harness, eventually

WORKMESH = [sys.executable, "-m", "workmesh.cli"]


async def cli(harness: Harness, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "WORKMESH_AMQP_URL": harness.amqp_url,
        "WORKMESH_DATABASE_URL": harness.database_url,
        "WORKMESH_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    process = await asyncio.create_subprocess_exec(
        *WORKMESH,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_help_explains_every_command(harness: Harness) -> None:
    code, out, _ = await cli(harness, "--help")
    assert code == 0
    for command in ("run", "migrate", "worker", "token", "submit", "stats", "dead"):
        assert command in out
    assert "least-loaded" in out
    code, out, _ = await cli(harness, "run", "--help")
    assert "--role" in out
    assert "dispatcher" in out


async def test_worker_token_submit_and_stats(harness: Harness, tmp_path: Path) -> None:
    await harness.start()
    # An operator registers a worker and a producer token
    code, out, err = await cli(harness, "worker", "add", "cli-bot", "--capacity", "3")
    assert code == 0, err
    worker = json.loads(out)
    assert (worker["id"], worker["queue"], worker["capacity"]) == (
        "cli-bot",
        "workmesh.worker.cli-bot",
        3,
    )
    assert worker["token"].startswith("wm_")
    code, out, err = await cli(harness, "worker", "add", "cli-bot")
    assert code == 1
    assert "exists already" in err
    code, out, err = await cli(harness, "worker", "add", "Bad Name")
    assert code == 1
    assert "bad worker" in err
    code, token, err = await cli(harness, "token", "add", "script")
    assert code == 0, err
    token = token.strip()
    # A script submits a JSON-lines file; bad lines are reported by number and skipped
    lines = [json.dumps({"kind": "cli", "priority": p}) for p in (1, 5, 9)]
    lines.insert(1, '{"kind": ""}')
    lines.append("not json")
    source = tmp_path / "tasks.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, out, err = await cli(harness, "submit", str(source), "--token", token)
    assert code == 1  # some lines were rejected
    assert "line 2: kind" in err
    assert "line 5:" in err
    assert "submitted 3, rejected 2" in err
    code, out, err = await cli(
        harness, "submit", "--token", token, stdin=b'{"kind": "from-stdin"}\n'
    )
    assert code == 0, err

    # No worker is online, so the four wait in RabbitMQ, where stats sees them
    code, out, err = await cli(harness, "stats", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["queues"]["workmesh.tasks.intake"] == 4
    assert sum(stats["tasks"].values()) == 0  # AMQP tasks are stored when dispatched
    # Once the worker comes online they are dispatched, highest priority first
    await harness.api("POST", "/api/v1/worker/heartbeat", token=worker["token"])

    async def four_assigned() -> bool:
        _, stats = await harness.api("GET", "/api/v1/stats")
        return bool(stats["tasks"]["assigned"] == 3)  # capacity 3: one still waits

    await eventually(four_assigned, message="three tasks assigned")
    code, out, err = await cli(harness, "submit", "--token", "")
    assert code == 1
    assert "producer token is needed" in err


async def test_a_new_workers_queue_exists_before_any_dispatcher_runs(harness: Harness) -> None:
    # No mesh is running: the CLI itself declares the queue, so the worker can consume at once
    code, _, err = await cli(harness, "worker", "add", "early-bird")
    assert code == 0, err
    connection = await aio_pika.connect(harness.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("workmesh.worker.early-bird", passive=True)
        assert queue.declaration_result.message_count == 0
