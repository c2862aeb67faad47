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
    .venv/bin/python -m bench.relay --paced 200 [--seconds 10]

``--paced``: the pipelined relay at a steady rate instead, the contract's floor for
bench/dispatch.py's latency phase: submit-to-bot latency p50 / p99 and the CPU each part
spends per task (the relay, the bots with the producer, RabbitMQ, the whole machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bench._common import (
    CpuMeter,
    Latency,
    add_vhost,
    delete_vhost,
    rabbitmq_pid,
    standard_pids,
)

ANCHOR = "issue anchor: a bare aio-pika two-hop relay about 600 msgs/s on the issue's machines"
BOTS = 4
BOT_PREFETCH = 4
WARMUP = 200  # tasks in a burst before a paced run, as bench/dispatch.py's warm-up
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


async def bots_and_producer(
    url: str, tasks: int, rate: float | None = None, out: Any = None
) -> None:
    """Four bots, then the producer: ``tasks`` at once; or, with ``rate``, a warm-up burst and
    the rest at ``rate`` a second, each stamped with its send time, the bots' latencies going
    to ``out`` when all arrived."""
    connection = await aio_pika.connect(url)
    setup = await connection.channel()
    await declare(setup)
    latencies: list[float] = []
    received: set[int] = set()
    warm = asyncio.Event()

    async def bot(k: int) -> None:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=BOT_PREFETCH)

        async def on_work(message: AbstractIncomingMessage) -> None:
            if rate is not None:
                sent = json.loads(message.body)
                received.add(sent["n"])
                if sent["n"] >= WARMUP:
                    latencies.append(time.time() - sent["stamp"])
                if len(received) == WARMUP:
                    warm.set()
                if len(received) == tasks:
                    out.put(latencies)
            await channel.default_exchange.publish(persistent(message.body), routing_key=REPORTS)
            await message.ack()

        await (await channel.get_queue(worker_queue(k))).consume(on_work)

    for k in range(BOTS):
        await bot(k)
    producer = await connection.channel(publisher_confirms=True)

    async def burst(numbers: range) -> None:
        window = 500  # publishes in flight at once, their confirms awaited together
        for start in range(numbers.start, numbers.stop, window):
            await asyncio.gather(
                *(
                    producer.default_exchange.publish(
                        persistent(json.dumps({"n": n, "stamp": time.time()}).encode()),
                        routing_key=TASKS,
                    )
                    for n in range(start, min(numbers.stop, start + window))
                )
            )

    if rate is None:
        await burst(range(tasks))
    else:
        # RabbitMQ's first writes in a new vhost are slow: a backlog from them must be gone
        # before the paced phase, as bench/dispatch.py's burst is gone before its own.
        await burst(range(WARMUP))
        await warm.wait()
        out.put("warm")  # the parent starts metering CPU
        await paced(producer, range(WARMUP, tasks), rate)
    await asyncio.Event().wait()  # the bots go on until the parent stops this process


async def paced(channel: AbstractChannel, numbers: range, rate: float) -> None:
    """As bench/_workmesh.py's producer: one publish every 1/rate s, none waiting for another."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = set()
    t0 = loop.time()
    for k, n in enumerate(numbers):
        if (pause := t0 + k / rate - loop.time()) > 0:
            await asyncio.sleep(pause)
        body = json.dumps({"n": n, "stamp": time.time()}).encode()
        task = asyncio.create_task(
            channel.default_exchange.publish(persistent(body), routing_key=TASKS)
        )
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def _bots_process(url: str, tasks: int, rate: float | None = None, out: Any = None) -> None:
    asyncio.run(bots_and_producer(url, tasks, rate, out))


def run_paced(rate: float, seconds: float) -> Latency:
    """The pipelined relay at a steady ``rate``, after a warm-up burst: latencies, and CPU
    from the warm-up's end to the last report."""
    tasks = WARMUP + int(rate * seconds)
    rabbitmq_pid()  # looked up now: rabbitmqctl takes a second, which would stall the relay
    vhost = f"bench-relay-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    add_vhost(vhost)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    latency = Latency(rate, seconds, sent=tasks - WARMUP)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    try:

        async def go() -> None:
            relaying = asyncio.create_task(relay(url, tasks, pipelined=True))
            await asyncio.sleep(1.0)
            process = context.Process(target=_bots_process, args=(url, tasks, rate, out))
            process.start()
            try:
                await asyncio.to_thread(out.get, True, 60)  # warmed up
                pids = standard_pids(os.getpid(), "driver")
                pids["driver"] = process.pid
                meter = CpuMeter(pids)
                await asyncio.wait_for(relaying, 300)
                latency.cpu = meter.stop()
                latency.cpu_window = meter.elapsed
                latency.samples = await asyncio.to_thread(out.get, True, 30)
            finally:
                process.terminate()
                process.join(10)

        asyncio.run(go())
    finally:
        delete_vhost(vhost)
    return latency


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
    parser.add_argument(
        "--paced", type=float, metavar="RATE", help="a steady RATE tasks/s instead of a burst"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long --paced runs")
    args = parser.parse_args()
    if args.paced:
        print_paced(run_paced(args.paced, args.seconds))
        return
    one_by_one = run(args.tasks, pipelined=False)
    pipelined = run(args.tasks, pipelined=True)
    print(ANCHOR)
    print(f"{args.tasks} tasks, 3 persistent confirmed messages each, {BOTS} bots x {BOT_PREFETCH}")
    print(f"{'relay':<12} {'tasks/s':>8} {'msgs/s':>8}")
    for name, rate in (("one by one", one_by_one), ("pipelined", pipelined)):
        print(f"{name:<12} {rate:>8.0f} {rate * 3:>8.0f}")


def print_paced(latency: Latency) -> None:
    p50, p99 = latency.percentile(50), latency.percentile(99)
    print(
        f"pipelined relay at {latency.rate:.0f} tasks/s for {latency.seconds:.0f} s, "
        f"{BOTS} bots x {BOT_PREFETCH}: {len(latency.samples)}/{latency.sent} received"
    )
    if p50 is not None and p99 is not None:
        print(f"latency submit to bot p50 / p99 (ms): {p50 * 1000:.1f} / {p99 * 1000:.1f}")
    names = " / ".join(latency.cpu)
    busy = " / ".join(f"{v:.0f}" for v in latency.cpu.values())
    # % of a core x the window's seconds / tasks = ms of CPU per task x 0.1
    window = latency.cpu_window / max(latency.sent, 1)
    per_task = " / ".join(f"{10 * v * window:.2f}" for v in latency.cpu.values())
    print(f"CPU % ({names.replace('server', 'relay')}): {busy}")
    print(f"CPU per task (ms): {per_task}")


if __name__ == "__main__":
    main()
