"""The contract's ceiling on this machine: a bare aio-pika relay with no database and no logic,
moving each task through the same three persistent, confirmed messages as workmesh.

    producer --tasks--> relay --worker.<k>--> bot --reports--> relay

Every message is persistent and published with a confirm; every consumer acks only after what
it published for that message was confirmed. Two relays, run one after the other:

- ``one by one``: the relay takes a task, publishes it and waits for the confirm, then acks
  (prefetch 1): the issue's "bare aio-pika two-hop relay, about 600 msgs/s";
- ``pipelined``: the relay takes up to 256 at once and acks each as its confirm arrives.

The producer and four bots (prefetch 4 each) run in a second process, so the relay has a core
of its own, as the mesh has in bench/dispatch.py.

    .venv/bin/python -m bench.relay [--tasks 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
import uuid

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bench._common import add_vhost, delete_vhost

ANCHOR = "issue anchor: a bare aio-pika two-hop relay about 600 msgs/s on the issue's machines"
BOTS = 4
BOT_PREFETCH = 4
TASKS, REPORTS = "relay.tasks", "relay.reports"


def worker_queue(k: int) -> str:
    return f"relay.worker.{k}"


async def declare(channel: AbstractChannel) -> None:
    # A priority queue, as workmesh's intake is.
    await channel.declare_queue(TASKS, durable=True, arguments={"x-max-priority": 10})
    await channel.declare_queue(REPORTS, durable=True)
    for k in range(BOTS):
        await channel.declare_queue(worker_queue(k), durable=True)


def persistent(body: bytes) -> aio_pika.Message:
    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def relay(url: str, tasks: int, pipelined: bool) -> tuple[float, float]:
    """Relay ``tasks`` tasks and take their reports; returns (first task seen, last report)."""
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=256 if pipelined else 1)
    reports_channel = await connection.channel()
    await reports_channel.set_qos(prefetch_count=256)
    await declare(channel)
    first: list[float] = []
    done = asyncio.Event()
    reported = 0
    turn = 0
    jobs: set[asyncio.Task[None]] = set()

    async def forward(message: AbstractIncomingMessage) -> None:
        nonlocal turn
        if not first:
            first.append(time.perf_counter())
        turn = (turn + 1) % BOTS  # round robin: the least-load choice costs the mesh, not this
        await channel.default_exchange.publish(
            persistent(message.body), routing_key=worker_queue(turn)
        )
        await message.ack()

    async def on_task(message: AbstractIncomingMessage) -> None:
        if pipelined:
            job = asyncio.create_task(forward(message))
            jobs.add(job)
            job.add_done_callback(jobs.discard)
        else:
            await forward(message)

    async def on_report(message: AbstractIncomingMessage) -> None:
        nonlocal reported
        await message.ack()
        reported += 1
        if reported == tasks:
            done.set()

    await (await channel.get_queue(TASKS)).consume(on_task)
    await (await reports_channel.get_queue(REPORTS)).consume(on_report)
    await done.wait()
    last = time.perf_counter()
    await connection.close()
    return first[0], last


async def bots_and_producer(url: str, tasks: int) -> None:
    connection = await aio_pika.connect(url)
    setup = await connection.channel()
    await declare(setup)

    async def bot(k: int) -> None:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=BOT_PREFETCH)

        async def on_work(message: AbstractIncomingMessage) -> None:
            await channel.default_exchange.publish(persistent(message.body), routing_key=REPORTS)
            await message.ack()

        await (await channel.get_queue(worker_queue(k))).consume(on_work)

    for k in range(BOTS):
        await bot(k)
    producer = await connection.channel(publisher_confirms=True)
    window = 500  # publishes in flight at once, their confirms awaited together
    for start in range(0, tasks, window):
        await asyncio.gather(
            *(
                producer.default_exchange.publish(persistent(str(n).encode()), routing_key=TASKS)
                for n in range(start, min(tasks, start + window))
            )
        )
    await asyncio.Event().wait()  # the bots go on until the parent stops this process


def _bots_process(url: str, tasks: int) -> None:
    asyncio.run(bots_and_producer(url, tasks))


def run(tasks: int, pipelined: bool) -> float:
    vhost = f"bench-relay-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    add_vhost(vhost)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    try:

        async def go() -> tuple[float, float]:
            # The relay declares the queues and starts consuming before the producer starts.
            relaying = asyncio.create_task(relay(url, tasks, pipelined))
            await asyncio.sleep(1.0)
            process = multiprocessing.get_context("spawn").Process(
                target=_bots_process, args=(url, tasks)
            )
            process.start()
            try:
                return await asyncio.wait_for(relaying, 300)
            finally:
                process.terminate()
                process.join(10)

        first, last = asyncio.run(go())
    finally:
        delete_vhost(vhost)
    return tasks / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    args = parser.parse_args()
    one_by_one = run(args.tasks, pipelined=False)
    pipelined = run(args.tasks, pipelined=True)
    print(ANCHOR)
    print(f"{args.tasks} tasks, 3 persistent confirmed messages each, {BOTS} bots x {BOT_PREFETCH}")
    print(f"{'relay':<12} {'tasks/s':>8} {'msgs/s':>8}")
    for name, rate in (("one by one", one_by_one), ("pipelined", pipelined)):
        print(f"{name:<12} {rate:>8.0f} {rate * 3:>8.0f}")


if __name__ == "__main__":
    main()
