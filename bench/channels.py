"""Channels benchmark: the same workload through each worker channel — AMQP, WebSocket, long
poll — printed side by side.

For each channel a fresh mesh (``workmesh run``, SQLite or with ``--postgres`` a fresh PostgreSQL
database, its own RabbitMQ vhost) gets the same
workers (ids, capacities) taking tasks only through that channel and finishing each at once:

- amqp: plain aio-pika bots (prefetch = capacity), ``task.done`` published with confirms;
- websocket: one socket per worker (``/api/v1/worker/ws``), ``status done`` sent back on it;
- longpoll: per worker, ``GET /api/v1/worker/tasks?wait=5&limit=<capacity>`` in a loop, then
  ``POST .../status`` ``done`` for each task.

Measured: a burst of N tasks (tasks/s from the first submit to the last task received by a
worker), and latency at a fixed rate (submit stamp → received by a worker: p50/p99).

    .venv/bin/python bench/channels.py           # full run (~2 min)
    .venv/bin/python bench/channels.py --quick   # smoke run (~40 s)
    .venv/bin/python bench/channels.py --postgres  # the mesh on PostgreSQL (127.0.0.1:5432)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aio_pika.abc import AbstractIncomingMessage

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import settle_garbage
from bench._workmesh import Api, Bot, MeshProcess, Producer, fresh_mesh

ANCHOR = (
    "issue anchor: tasks/s and p99 per channel for the same workload (no numeric target); "
    "the AMQP channel is the dispatch benchmark's (bench/dispatch.py)"
)
CHANNELS = ("amqp", "websocket", "longpoll")


@dataclass
class Tally:
    """What the workers of one channel received, per phase."""

    received: dict[str, int] = field(default_factory=dict)
    delays: dict[str, list[float]] = field(default_factory=dict)  # received - submit stamp
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    last: float = 0.0
    errors: list[str] = field(default_factory=list)

    def record(self, assignment: dict[str, Any]) -> None:
        now = time.time()
        if assignment["task_id"] in self.seen:
            self.duplicates += 1
        self.seen.add(assignment["task_id"])
        payload = assignment.get("payload") or {}
        phase = str(payload.get("phase", "?"))
        self.received[phase] = self.received.get(phase, 0) + 1
        self.delays.setdefault(phase, []).append(now - float(payload.get("stamp", now)))
        self.last = now


class SocketWorker:
    def __init__(self, base: str, spec: dict[str, Any], tally: Tally) -> None:
        self.base, self.token, self.tally = base, spec["token"], tally
        self.http = aiohttp.ClientSession()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        self.socket = await self.http.ws_connect(f"{self.base}/api/v1/worker/ws", headers=headers)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        beat = time.monotonic()
        async for frame in self.socket:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if message["type"] == "assignment":
                self.tally.record(message)
                await self.socket.send_json(
                    {"type": "status", "task_id": message["task_id"], "status": "done"}
                )
            elif message["type"] == "error":
                self.tally.errors.append(str(message))
            if time.monotonic() - beat > 1:
                beat = time.monotonic()
                await self.socket.send_json({"type": "heartbeat"})

    async def heartbeat(self) -> None:
        await self.socket.send_json({"type": "heartbeat"})

    async def close(self) -> None:
        await self.socket.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.http.close()


class PollWorker:
    def __init__(self, base: str, spec: dict[str, Any], capacity: int, tally: Tally) -> None:
        self.base, self.capacity, self.tally = base, capacity, tally
        self.headers = {"Authorization": f"Bearer {spec['token']}"}
        self.http = aiohttp.ClientSession(headers=self.headers)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.heartbeat()
        self._task = asyncio.create_task(self._run())

    async def heartbeat(self) -> None:
        async with self.http.post(f"{self.base}/api/v1/worker/heartbeat") as resp:
            resp.raise_for_status()

    async def _run(self) -> None:
        url = f"{self.base}/api/v1/worker/tasks?wait=5&limit={self.capacity}"
        beat = time.monotonic()
        while True:
            async with self.http.get(url) as resp:
                body = await resp.json()
            if resp.status != 200:
                self.tally.errors.append(str(body))
                await asyncio.sleep(0.5)
                continue
            for assignment in body["assignments"]:
                self.tally.record(assignment)
            await asyncio.gather(*(self._done(a["task_id"]) for a in body["assignments"]))
            if time.monotonic() - beat > 1:
                beat = time.monotonic()
                await self.heartbeat()

    async def _done(self, task_id: str) -> None:
        url = f"{self.base}/api/v1/worker/tasks/{task_id}/status"
        async with self.http.post(url, json={"status": "done"}) as resp:
            if resp.status != 200:
                self.tally.errors.append(f"{task_id}: HTTP {resp.status} {await resp.text()}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.http.close()


class AmqpWorker(Bot):
    """The dispatch benchmark's bot, its receipts also counted in the channel's tally."""

    def __init__(self, spec: dict[str, Any], capacity: int, tally: Tally, url: str) -> None:
        super().__init__(spec, capacity)
        self.tally, self.url = tally, url

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.type == "assignment":
            self.tally.record(json.loads(message.body))
        await super()._on_message(message)

    async def start(self) -> None:  # type: ignore[override]
        await super().start(self.url)


@dataclass
class Outcome:
    channel: str
    burst_rate: float | None = None
    p50: float | None = None
    p99: float | None = None
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


async def _until(check: Callable[[], Awaitable[bool]], what: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def measure(channel: str, mesh: MeshProcess, url: str, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(channel)
    tally = Tally()
    workers: list[Any]
    if channel == "amqp":
        workers = [AmqpWorker(s, args.capacity, tally, url) for s in mesh.workers]
    elif channel == "websocket":
        workers = [SocketWorker(mesh.base, s, tally) for s in mesh.workers]
    else:
        workers = [PollWorker(mesh.base, s, args.capacity, tally) for s in mesh.workers]
    producer = Producer(mesh.producer_token)
    async with Api(mesh.base, mesh.admin_token) as api:
        await _until(api.healthy, "mesh /healthz", 60)
        for worker in workers:
            await worker.start()
        for worker in workers:
            if isinstance(worker, SocketWorker):
                await worker.heartbeat()

        async def all_online() -> bool:
            views = (await api.get("/api/v1/workers"))["workers"]
            return sum(bool(v["online"]) for v in views) >= len(workers)

        await _until(all_online, "workers online", 30)
        await producer.start(url)
        try:
            await producer.burst("warm", args.warmup)
            await _until(lambda: _true(tally.received.get("warm", 0) >= args.warmup), "warm-up", 60)
            settle_garbage()
            start = time.time()
            await producer.burst("burst", args.n)
            await _until(lambda: _true(tally.received.get("burst", 0) >= args.n), "the burst", 300)
            outcome.burst_rate = args.n / (tally.last - start)
            sent = await producer.paced("paced", args.rate, args.seconds)
            await _until(lambda: _true(tally.received.get("paced", 0) >= sent), "paced", 60)
            outcome.sent = sent
            outcome.p50 = percentile(tally.delays["paced"], 50)
            outcome.p99 = percentile(tally.delays["paced"], 99)
        except TimeoutError as error:
            outcome.problems.append(str(error))
        finally:
            await producer.close()
            for worker in workers:
                await worker.close()
    outcome.received = sum(tally.received.values())
    outcome.duplicates = tally.duplicates
    outcome.problems += tally.errors[:3]
    return outcome


async def _true(value: bool) -> bool:
    return value


def run_channel(channel: str, args: argparse.Namespace, log: Callable[[str], None]) -> Outcome:
    with fresh_mesh(
        f"channels-{channel}", args.host, args.workers, args.capacity, args.postgres, args.keep
    ) as (mesh, url):
        log(f"{channel}: mesh started, {args.workers} workers x capacity {args.capacity}")
        outcome = asyncio.run(measure(channel, mesh, url, args))
        outcome.problems += mesh.problems()[:3]
        return outcome


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~40 s)")
    parser.add_argument("--host", default="127.0.0.1:5672", help="RabbitMQ host:port")
    parser.add_argument("--workers", type=int, default=4, help="workers per channel")
    parser.add_argument("--capacity", type=int, default=8, help="capacity of each worker")
    parser.add_argument("--only", choices=CHANNELS, action="append", help="run these channels")
    parser.add_argument("--keep", action="store_true", help="keep the mesh's work directories")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run each mesh on a fresh PostgreSQL database (WORKMESH_TEST_PG names the server)",
    )
    args = parser.parse_args(argv)
    args.n, args.warmup = (300, 50) if args.quick else (2000, 200)
    args.rate, args.seconds = (50.0, 4.0) if args.quick else (100.0, 10.0)

    def log(line: str) -> None:
        print(f"  .. {line}", file=sys.stderr, flush=True)

    started = time.monotonic()
    outcomes = [run_channel(channel, args, log) for channel in args.only or CHANNELS]
    print(
        f"\nworkmesh channels benchmark ({'quick' if args.quick else 'full'} run, "
        f"{time.monotonic() - started:.0f} s; {args.workers} workers x capacity "
        f"{args.capacity}; burst {args.n} tasks; latency at {args.rate:g}/s for "
        f"{args.seconds:g} s; {'PostgreSQL' if args.postgres else 'SQLite'})"
    )
    print(ANCHOR)
    print(
        f"\n{'channel':<10} {'burst tasks/s':>14} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'received':>9} {'dupes':>6}"
    )
    for o in outcomes:
        rate = "-" if o.burst_rate is None else f"{o.burst_rate:.0f}"
        print(
            f"{o.channel:<10} {rate:>14} {_ms(o.p50):>8} {_ms(o.p99):>8} "
            f"{o.received:>9} {o.duplicates:>6}"
        )
    for o in outcomes:
        for problem in o.problems:
            print(f"  ! {o.channel}: {problem}")
    return 1 if any(o.problems or o.duplicates for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
