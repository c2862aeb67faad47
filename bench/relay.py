"""The contract's ceiling on this machine: a bare aio-pika relay with no database and no logic,
moving each task through the same three persistent, confirmed messages as workmesh.

    producer --tasks--> relay --worker.<k>--> bot --reports--> relay

Every message is persistent and published with a confirm; every consumer acks only after what
it published for that message was confirmed. Four relays, run one after the other:

- ``one by one``: the relay takes a task, publishes it and waits for the confirm, then acks
  (prefetch 1): the issue's "bare aio-pika two-hop relay, about 600 msgs/s";
- ``pipelined``: the relay takes up to 256 at once and acks each as its confirm arrives. It
  does not keep the issue's priority rule: under load it holds up to 256 tasks that RabbitMQ
  can no longer put in priority order.

The other two keep that rule, as workmesh must: they never hold more tasks than the bots have
free slots, so the rest wait in RabbitMQ in priority order; each gives a task to the bot with
the fewest in hand, over priority queues like workmesh's worker queues. Still no database, no
events, no checks: the ceiling for an implementation of the contract that keeps priorities.

- ``held``: a consumer whose prefetch is the bots' slots; a task's delivery stays unacknowledged
  until its report comes, so RabbitMQ itself sends no more than there is room for. Only while
  the slots never change (a consumer's prefetch is fixed when it starts) and every task ends
  within RabbitMQ's consumer timeout (30 minutes by default): not a design for workmesh,
  whose workers come, go and change, and whose tasks may take hours; the upper bound.
- ``bounded``: workmesh's way: one ``basic.get`` per free slot, on four channels at once, each
  task acknowledged once its assignment is confirmed.

The producer and four bots (prefetch 4 each) run in a second process, so the relay has a core
of its own, as the mesh has in bench/dispatch.py.

    .venv/bin/python -m bench.relay [--tasks 5000]
    .venv/bin/python -m bench.relay --paced 200 [--seconds 10] [--mode held]

``--paced``: the pipelined (or, with ``--mode held``, the held) relay at a steady rate instead,
the contract's floor for bench/dispatch.py's latency phase: submit-to-bot latency p50 / p99 and
the CPU each part spends per task (the relay, the bots with the producer, RabbitMQ, the whole
machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Coroutine
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


MODES = ("one by one", "pipelined", "held", "bounded")
KEEPS_PRIORITY = ("held", "bounded")
SLOTS = BOTS * BOT_PREFETCH
# Channels the bounded relay asks basic.get on at once, as workmesh's leader does.
GET_CHANNELS = 4


async def declare(channel: AbstractChannel, mode: str) -> None:
    # A priority queue, as workmesh's intake is; keeping priorities, the worker queues too.
    await channel.declare_queue(TASKS, durable=True, arguments={"x-max-priority": 10})
    await channel.declare_queue(REPORTS, durable=True)
    workers: dict[str, Any] | None = {"x-max-priority": 9} if mode in KEEPS_PRIORITY else None
    for k in range(BOTS):
        await channel.declare_queue(worker_queue(k), durable=True, arguments=workers)


def persistent(
    body: bytes, priority: int = 0, app_id: str | None = None, message_id: str | None = None
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=priority,
        app_id=app_id,
        message_id=message_id,
    )


class Relaying:
    """What every relay has: a connection with a confirmed channel for tasks and assignments
    and a channel for reports, when it saw its first task and took its last report."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks
        self.first: float | None = None
        self.last = 0.0
        self.reported = 0
        self.done = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()

    async def open(self, url: str, mode: str, prefetch: int | None) -> AbstractChannel:
        self.connection = await aio_pika.connect(url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        if prefetch is not None:
            await self.channel.set_qos(prefetch_count=prefetch)
        self.reports = await self.connection.channel()
        await self.reports.set_qos(prefetch_count=256)
        await declare(self.channel, mode)
        return self.channel

    def saw_task(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def take_reports(self, on_report: Callable[[AbstractIncomingMessage], Any]) -> None:
        async def report(message: AbstractIncomingMessage) -> None:
            await on_report(message)
            await message.ack()
            self.reported += 1
            if self.reported == self.tasks:
                self.last = time.perf_counter()
                self.done.set()

        await (await self.reports.get_queue(REPORTS)).consume(report)

    async def finish(self) -> tuple[float, float]:
        """(first task seen, last report), once every report came."""
        await self.done.wait()
        await self.connection.close()
        assert self.first is not None
        return self.first, self.last


async def _nothing(message: AbstractIncomingMessage) -> None:
    pass


async def relay(url: str, tasks: int, pipelined: bool) -> tuple[float, float]:
    """Relay ``tasks`` tasks and take their reports; returns (first task seen, last report)."""
    run = Relaying(tasks)
    channel = await run.open(
        url, "pipelined" if pipelined else "one by one", 256 if pipelined else 1
    )
    turn = 0

    async def forward(message: AbstractIncomingMessage) -> None:
        nonlocal turn
        run.saw_task()
        turn = (turn + 1) % BOTS  # round robin: the least-load choice costs the mesh, not this
        await channel.default_exchange.publish(
            persistent(message.body), routing_key=worker_queue(turn)
        )
        await message.ack()

    async def on_task(message: AbstractIncomingMessage) -> None:
        if pipelined:
            run.spawn(forward(message))
        else:
            await forward(message)

    await (await channel.get_queue(TASKS)).consume(on_task)
    await run.take_reports(_nothing)
    return await run.finish()


async def bounded_relay(url: str, tasks: int) -> tuple[float, float]:
    """Relay as ``relay`` does, holding no more tasks than the bots have free slots (the
    module's docstring); returns (first task seen, last report)."""
    run = Relaying(tasks)
    channel = await run.open(url, "bounded", None)
    queues = [
        await (await run.connection.channel()).get_queue(TASKS, ensure=False)
        for _ in range(GET_CHANNELS)
    ]
    in_hand = [0] * BOTS  # tasks given to each bot and not yet reported
    room = asyncio.Event()

    async def forward(message: AbstractIncomingMessage, k: int) -> None:
        await channel.default_exchange.publish(
            persistent(message.body, priority=message.priority or 0), routing_key=worker_queue(k)
        )
        await message.ack()

    async def take(queue: aio_pika.abc.AbstractQueue) -> None:
        while not run.done.is_set():
            if sum(in_hand) >= SLOTS:
                room.clear()
                await room.wait()
                continue
            k = min(range(BOTS), key=in_hand.__getitem__)  # the least load
            in_hand[k] += 1  # the slot is taken before the round trip, so no one else takes it
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                in_hand[k] -= 1
                await asyncio.sleep(0.001)  # empty: the burst has not begun or is over
                continue
            run.saw_task()
            run.spawn(forward(message, k))

    async def on_report(message: AbstractIncomingMessage) -> None:
        in_hand[int(message.app_id or 0)] -= 1
        room.set()

    await run.take_reports(on_report)
    takers = [asyncio.create_task(take(queue)) for queue in queues]
    await run.done.wait()
    room.set()
    await asyncio.gather(*takers)
    return await run.finish()


async def held_relay(url: str, tasks: int) -> tuple[float, float]:
    """Relay as ``relay`` does, each task's delivery held until its report comes (the module's
    docstring); returns (first task seen, last report)."""
    run = Relaying(tasks)
    channel = await run.open(url, "held", SLOTS)
    in_hand = [0] * BOTS
    held: dict[str, AbstractIncomingMessage] = {}  # by delivery tag, sent as the message id

    async def forward(message: AbstractIncomingMessage, k: int) -> None:
        assignment = persistent(
            message.body, priority=message.priority or 0, message_id=str(message.delivery_tag)
        )
        await channel.default_exchange.publish(assignment, routing_key=worker_queue(k))

    async def on_task(message: AbstractIncomingMessage) -> None:
        run.saw_task()
        k = min(range(BOTS), key=in_hand.__getitem__)  # the least load
        in_hand[k] += 1
        held[str(message.delivery_tag)] = message
        run.spawn(forward(message, k))

    async def on_report(message: AbstractIncomingMessage) -> None:
        in_hand[int(message.app_id or 0)] -= 1
        await held.pop(message.message_id or "").ack()

    await run.take_reports(on_report)
    await (await channel.get_queue(TASKS)).consume(on_task)
    return await run.finish()


async def bots_and_producer(
    url: str, mode: str, tasks: int, rate: float | None = None, out: Any = None
) -> None:
    """Four bots, then the producer: ``tasks`` at once; or, with ``rate``, a warm-up burst and
    the rest at ``rate`` a second, each stamped with its send time, the bots' latencies going
    to ``out`` when all arrived. Priorities 0-9 in turn, as bench/dispatch.py submits. A
    bot's report names the bot (app id) and carries the assignment's message id."""
    connection = await aio_pika.connect(url)
    setup = await connection.channel()
    await declare(setup, mode)
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
            report = persistent(message.body, app_id=str(k), message_id=message.message_id)
            await channel.default_exchange.publish(report, routing_key=REPORTS)
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
                        persistent(
                            json.dumps({"n": n, "stamp": time.time()}).encode(), priority=n % 10
                        ),
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
            channel.default_exchange.publish(persistent(body, priority=n % 10), routing_key=TASKS)
        )
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def _bots_process(
    url: str, mode: str, tasks: int, rate: float | None = None, out: Any = None
) -> None:
    asyncio.run(bots_and_producer(url, mode, tasks, rate, out))


def _relay(mode: str, url: str, tasks: int) -> Coroutine[Any, Any, tuple[float, float]]:
    if mode == "held":
        return held_relay(url, tasks)
    if mode == "bounded":
        return bounded_relay(url, tasks)
    return relay(url, tasks, pipelined=mode == "pipelined")


def run_paced(rate: float, seconds: float, mode: str = "pipelined") -> Latency:
    """The relay at a steady ``rate``, after a warm-up burst: latencies, and CPU from the
    warm-up's end to the last report. Not ``bounded``: its basic.gets find the queue empty
    between arrivals and would poll it (workmesh's doorbell is not in it)."""
    if mode not in ("pipelined", "held"):
        raise ValueError(f"--paced runs the pipelined or the held relay, not {mode!r}")
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
            relaying = asyncio.create_task(_relay(mode, url, tasks))
            await asyncio.sleep(1.0)
            process = context.Process(target=_bots_process, args=(url, mode, tasks, rate, out))
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


def run(tasks: int, mode: str = "pipelined") -> float:
    """Tasks/s of one of the ``MODES``, from the first task the relay takes to the last report."""
    vhost = f"bench-relay-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    add_vhost(vhost)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    try:

        async def go() -> tuple[float, float]:
            # The relay declares the queues and starts consuming before the producer starts.
            relaying = asyncio.create_task(_relay(mode, url, tasks))
            await asyncio.sleep(1.0)
            process = multiprocessing.get_context("spawn").Process(
                target=_bots_process, args=(url, mode, tasks)
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
    parser.add_argument(
        "--mode",
        choices=("pipelined", "held"),
        default="pipelined",
        help="the relay --paced runs (the module's docstring says what each does)",
    )
    args = parser.parse_args()
    if args.paced:
        print_paced(run_paced(args.paced, args.seconds, args.mode), args.mode)
        return
    rates = {mode: run(args.tasks, mode) for mode in MODES}
    print(ANCHOR)
    print(f"{args.tasks} tasks, 3 persistent confirmed messages each, {BOTS} bots x {BOT_PREFETCH}")
    print(f"{'relay':<12} {'tasks/s':>8} {'msgs/s':>8}  priority order under load")
    for mode, rate in rates.items():
        kept = "kept" if mode in KEEPS_PRIORITY else "lost" if mode == "pipelined" else "kept (one)"
        print(f"{mode:<12} {rate:>8.0f} {rate * 3:>8.0f}  {kept}")


def print_paced(latency: Latency, mode: str = "pipelined") -> None:
    p50, p99 = latency.percentile(50), latency.percentile(99)
    print(
        f"{mode} relay at {latency.rate:.0f} tasks/s for {latency.seconds:.0f} s, "
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
