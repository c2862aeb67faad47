"""``workmesh dead``: an operator looks at the dead letters and moves them to a file."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aio_pika

from rabbitmq.topology import declare_topology
from tests.bots import Producer
from tests.conftest import Harness, eventually
from tests.test_cli import cli

ROOT = Path(__file__).resolve().parent.parent


async def dead_count(amqp_url: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("workmesh.dead", passive=True)
        return int(queue.declaration_result.message_count or 0)


async def dead_count_is(amqp_url: str, count: int) -> bool:
    return await dead_count(amqp_url) == count


async def dead_letter_by_rabbitmq(amqp_url: str) -> None:
    """A message RabbitMQ itself dead-letters, as it does one a worker rejects: no reason
    header of the mesh's, only RabbitMQ's x-death record."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            "", exclusive=True, arguments={"x-dead-letter-exchange": "workmesh.dead"}
        )
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"task_id": "t-rejected"}'), routing_key=queue.name
        )
        message = await queue.get(timeout=5)
        await message.reject(requeue=False)


async def three_dead_letters(harness: Harness) -> None:
    await harness.start()
    await harness.bot("w", capacity=2)
    await harness.wait_online("w")
    async with Producer(harness.amqp_url, await harness.producer_token()) as producer:
        await producer.submit_raw(b"{not json")
    async with Producer(harness.amqp_url, None) as anonymous:
        await anonymous.submit_raw(b'{"kind": "k", "payload": {}}')
    await eventually(lambda: dead_count_is(harness.amqp_url, 2), message="mesh dead letters")
    await dead_letter_by_rabbitmq(harness.amqp_url)
    await eventually(lambda: dead_count_is(harness.amqp_url, 3), message="three dead letters")


async def test_dead_list_shows_reasons_and_leaves_them_queued(harness: Harness) -> None:
    # Given a malformed task, an anonymous one and a message RabbitMQ dead-lettered
    await three_dead_letters(harness)
    # When an operator lists them
    code, out, err = await cli(harness, "dead", "list", "--json")
    assert code == 0, err
    letters = [json.loads(line) for line in out.splitlines()]
    # Then each says why and where from, in the order they died
    assert [(d["source"], d["reason"].split(":")[0]) for d in letters] == [
        ("workmesh.tasks.intake", "invalid task"),
        ("workmesh.tasks.intake", "unauthorized"),
        (letters[2]["headers"]["x-first-death-queue"], "RabbitMQ"),
    ]
    assert letters[0]["body"] == "{not json"
    assert "x-workmesh-token" not in letters[0]["headers"]
    assert letters[2]["source"].startswith("amq.gen-")
    assert letters[2]["reason"] == f"RabbitMQ: rejected in {letters[2]['source']}"
    # And they are still there, in the same order
    assert await dead_count(harness.amqp_url) == 3
    code, out, err = await cli(harness, "dead", "list", "--limit", "1")
    assert code == 0, err
    assert "3 dead letters in workmesh.dead" in out
    assert "invalid task" in out
    assert "unauthorized" not in out
    assert "the first 1 of 3" in err


async def test_dead_move_writes_then_removes_in_order(harness: Harness, tmp_path: Path) -> None:
    await three_dead_letters(harness)
    archive = tmp_path / "dead.jsonl"
    # When two are moved, then the rest
    code, _, err = await cli(harness, "dead", "move", str(archive), "--limit", "2")
    assert code == 0, err
    assert "moved 2 dead letters" in err
    assert await dead_count(harness.amqp_url) == 1
    code, _, err = await cli(harness, "dead", "move", str(archive))
    assert code == 0, err
    assert "moved 1 dead letters" in err
    # Then the file holds all three, oldest first, and the queue is empty
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    reasons = [d["reason"].split(":")[0] for d in lines]
    assert reasons == ["invalid task", "unauthorized", "RabbitMQ"]
    assert await dead_count(harness.amqp_url) == 0
    code, _, err = await cli(harness, "dead", "move", "-")
    assert code == 0, err
    assert "moved 0 dead letters to stdout" in err


async def test_dead_bad_input_is_refused_and_nothing_moves(harness: Harness) -> None:
    # Before the mesh ever ran on this vhost there is no dead-letter queue to read
    code, _, err = await cli(harness, "dead", "list")
    assert code == 1
    assert "workmesh.dead does not exist: has the mesh run" in err
    await three_dead_letters(harness)
    code, _, err = await cli(harness, "dead", "list", "--limit", "0")
    assert code == 2
    assert "must be at least 1" in err
    code, _, err = await cli(harness, "dead", "move", "/nonexistent-dir/dead.jsonl")
    assert code == 1
    assert "cannot write /nonexistent-dir/dead.jsonl" in err
    assert await dead_count(harness.amqp_url) == 3


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr}"
    return done.stdout


async def test_the_compose_policy_bounds_only_the_dead_letter_queue(amqp_url: str) -> None:
    # Given the policy rabbitmq/definitions.json gives the compose RabbitMQ, set on a vhost
    # (RabbitMQ refuses a policy whose definition it does not know: this checks the file too)
    vhost = amqp_url.rsplit("/", 1)[1]
    definitions = json.loads((ROOT / "rabbitmq" / "definitions.json").read_text())
    (policy,) = [p for p in definitions["policies"] if p["name"] == "workmesh-dead-bound"]
    definition = json.dumps(policy["definition"])
    await asyncio.to_thread(
        rabbitmqctl,
        "set_policy",
        "-p",
        vhost,
        policy["name"],
        policy["pattern"],
        definition,
        "--apply-to",
        policy["apply-to"],
    )
    # When the mesh declares its queues
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await declare_topology(await connection.channel(), [1.0])
    # Then the dead-letter queue has it, and no queue whose messages matter does
    listed = await asyncio.to_thread(
        rabbitmqctl, "list_queues", "-p", vhost, "name", "policy", "--no-table-headers"
    )
    policies = dict([*line.split("\t"), ""][:2] for line in listed.splitlines() if line)
    assert policies.pop("workmesh.dead").strip() == "workmesh-dead-bound"
    assert "workmesh.tasks.intake" in policies
    assert all(not p.strip() for p in policies.values()), policies
