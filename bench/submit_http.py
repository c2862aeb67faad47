"""Submission benchmark: tasks submitted over HTTP (``POST /api/v1/tasks``) against the same
number over AMQP (the anchor: ``workmesh.tasks`` with confirms), on one mesh, printed side by
side.

A fresh mesh (``workmesh run``, SQLite or with ``--postgres`` a fresh PostgreSQL database, its
own RabbitMQ vhost) with aio-pika bots that finish every task at once, so submissions compete
with dispatch as they would in use. After a warm-up, N tasks over AMQP (256 publishes awaiting
their confirms at a time, as bench/dispatch.py's producer), then N over HTTP (``--concurrency``
requests at a time, each with a producer token and its own idempotency key). For each: the
submission rate (first submit to last accepted), for HTTP the request time p50/p99, and the
rate until the bots have received every task.

    .venv/bin/python bench/submit_http.py             # ~1 min
    .venv/bin/python bench/submit_http.py --postgres  # the mesh on PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import settle_garbage
from bench._workmesh import Api, Bot, MeshProcess, Producer, fresh_mesh

ANCHOR = "anchor: the same tasks over AMQP (confirms, 256 in flight), in the same run"


@dataclass
class Side:
    name: str
    submitted_per_s: float = 0.0
    received_per_s: float = 0.0
    request_ms: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> str:
        if not self.request_ms:
            return "-"
        ordered = sorted(self.request_ms)
        return f"{ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]:.1f}"


async def _until(check: Callable[[], bool], what: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def submit_over_http(
    base: str, token: str, phase: str, n: int, concurrency: int, side: Side
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    seqs = iter(range(n))
    async with aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as http:

        async def sender() -> None:
            for seq in seqs:
                body = {
                    "kind": "noop",
                    "payload": {"phase": phase, "seq": seq, "stamp": time.time()},
                    "priority": seq % 10,
                    "idempotency_key": f"{phase}-{seq}-{uuid.uuid4().hex[:8]}",
                }
                started = time.perf_counter()
                async with http.post(f"{base}/api/v1/tasks", json=body) as response:
                    if response.status != 201:
                        side.refused.append(f"{response.status} {await response.text()}")
                side.request_ms.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(sender() for _ in range(concurrency)))


async def measure(mesh: MeshProcess, url: str, args: argparse.Namespace) -> list[Side]:
    bots = [Bot(spec, mesh.capacity) for spec in mesh.workers]
    producer = Producer(mesh.producer_token)
    async with Api(mesh.base, mesh.admin_token) as api:
        deadline = time.monotonic() + 60
        while not await api.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError("mesh /healthz")
            await asyncio.sleep(0.2)
        await asyncio.gather(*(bot.start(url) for bot in bots))
        await producer.start(url)

        def received(phase: str) -> int:
            return sum(bot.received.get(phase, 0) for bot in bots)

        await producer.burst("warm", args.warmup)
        await submit_over_http(
            mesh.base, mesh.producer_token, "warm-http", args.warmup, args.concurrency, Side("-")
        )
        await _until(
            lambda: received("warm") + received("warm-http") >= 2 * args.warmup, "warm-up", 60
        )
        settle_garbage()

        amqp, http = Side("AMQP"), Side("HTTP")
        started = time.monotonic()
        await producer.burst("amqp", args.n)
        amqp.submitted_per_s = args.n / (time.monotonic() - started)
        await _until(lambda: received("amqp") >= args.n, "the AMQP tasks", 300)
        amqp.received_per_s = args.n / (time.monotonic() - started)

        started = time.monotonic()
        await submit_over_http(
            mesh.base, mesh.producer_token, "http", args.n, args.concurrency, http
        )
        http.submitted_per_s = args.n / (time.monotonic() - started)
        if not http.refused:
            await _until(lambda: received("http") >= args.n, "the HTTP tasks", 300)
            http.received_per_s = args.n / (time.monotonic() - started)
        for bot in bots:
            await bot.close()
        await producer.connection.close()
        return [amqp, http]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1:5672", help="RabbitMQ host:port")
    parser.add_argument("-n", type=int, default=2000, help="tasks per side")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP requests at a time")
    parser.add_argument("--workers", type=int, default=4, help="bots")
    parser.add_argument("--capacity", type=int, default=8, help="capacity of each bot")
    parser.add_argument("--keep", action="store_true", help="keep the mesh's work directory")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run the mesh on a fresh PostgreSQL database (WORKMESH_TEST_PG names the server)",
    )
    args = parser.parse_args(argv)
    args.warmup = 200
    started = time.monotonic()
    with fresh_mesh("submit", args.host, args.workers, args.capacity, args.postgres, args.keep) as (
        mesh,
        url,
    ):
        sides = asyncio.run(measure(mesh, url, args))
        problems = mesh.problems()[:3]
    print(
        f"\nworkmesh submission benchmark ({time.monotonic() - started:.0f} s; {args.n} tasks a "
        f"side; HTTP {args.concurrency} at a time; {args.workers} bots x capacity "
        f"{args.capacity}; {'PostgreSQL' if args.postgres else 'SQLite'})"
    )
    print(ANCHOR)
    print(
        f"\n{'side':<6} {'submitted/s':>12} {'received/s':>11} "
        f"{'request p50 ms':>15} {'request p99 ms':>15}"
    )
    for side in sides:
        print(
            f"{side.name:<6} {side.submitted_per_s:>12.0f} {side.received_per_s:>11.0f} "
            f"{side.percentile(50):>15} {side.percentile(99):>15}"
        )
    amqp, http = sides
    print(f"\nHTTP / AMQP submitted: {http.submitted_per_s / amqp.submitted_per_s:.2f}x")
    for problem in http.refused[:3] + problems:
        print(f"  ! {problem}")
    return 1 if http.refused or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
