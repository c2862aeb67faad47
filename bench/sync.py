"""Two-way order sync: changes/s sustained, and the time from a commit on A to the change
being visible on B (p50/p99), with nothing diverged at the end. Target: p99 < 1 s at
200 changes/s.

Runs ``workmesh orders pair`` as real processes (SQLite by default; ``--postgres`` for two
PostgreSQL databases), makes ``--orders`` orders on A, then changes them round-robin at
``--rate`` changes/s for ``--seconds`` s through A's API. Each change writes a unique note; a
watcher reads B's list (``updated_since``, keyset pages) every ``--poll`` s and records when
each note first shows. "Commit" is when the change was asked of A's API, so the
latency is over-estimated: it counts from when the change was asked (before the commit), and
includes up to one poll interval.

    .venv/bin/python -m bench.sync                # 200 changes/s for 20 s
    .venv/bin/python -m bench.sync --quick        # 100 changes/s for 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _pg_databases() -> tuple[list[str], list[str]]:
    import asyncpg

    admin_url = os.environ.get("WORKMESH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    names = [f"bench_sync_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = await asyncpg.connect(admin_url)
    for name in names:
        await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return [f"{base}/{n}" for n in names], names


async def _drop_pg(names: list[str]) -> None:
    import asyncpg

    admin_url = os.environ.get("WORKMESH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    admin = await asyncpg.connect(admin_url)
    for name in names:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http, self.url = http, url
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        async with self.http.request(
            method, self.url + path, headers=self.headers, **kw
        ) as response:
            body = await response.json()
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {body}")
            return body

    async def everything(self, since: datetime | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": "1000"}
            if since is not None:
                params["updated_since"] = since.isoformat()
            if cursor:
                params["cursor"] = cursor
            page = await self.call("GET", "/api/v1/orders", params=params)
            found += page["orders"]
            cursor = page["next"]
            if cursor is None:
                return found


async def run(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as http:
        a = Client(http, report["A"]["url"], report["A"]["admin_token"])
        b = Client(http, report["B"]["url"], report["B"]["admin_token"])
        body = {"customer": "Bench", "status": "new", "items": [], "note": ""}
        ids = []
        for _ in range(args.orders):
            ids.append((await a.call("POST", "/api/v1/orders", json=body))["id"])
        # Wait for the creations to be synced both ways before measuring.
        deadline = time.monotonic() + 60
        while True:
            states = [o["sync_state"] for o in await a.everything()]
            if states.count("OK") == args.orders:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the initial orders did not sync in 60 s")
            await asyncio.sleep(0.2)

        committed: dict[str, float] = {}
        seen: dict[str, float] = {}
        stop_watch = asyncio.Event()

        async def watch() -> None:
            since = datetime.now(UTC) - timedelta(seconds=5)
            while not stop_watch.is_set():
                started = datetime.now(UTC)
                for order in await b.everything(since):
                    note = order["body"]["note"]
                    if note and note not in seen:
                        seen[note] = time.monotonic()
                since = started - timedelta(seconds=1)
                await asyncio.sleep(args.poll)

        watcher = asyncio.create_task(watch())
        total = int(args.rate * args.seconds)
        semaphore = asyncio.Semaphore(128)
        errors: list[str] = []

        async def change(n: int) -> None:
            note = f"c{n}"
            asked = time.monotonic()
            async with semaphore:
                try:
                    await a.call(
                        "PUT", f"/api/v1/orders/{ids[n % len(ids)]}", json={**body, "note": note}
                    )
                except Exception as error:
                    errors.append(str(error))
                    return
            # The commit happened between the request and the answer; counting from the
            # request (and from before any wait for a free connection) over-estimates.
            committed[note] = asked

        start = time.monotonic()
        tasks = []
        for n in range(total):
            delay = start + n / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(change(n)))
        await asyncio.gather(*tasks)
        sent_end = time.monotonic()
        # Every order's last change must show on B; earlier ones may be overtaken.
        last_notes = {f"c{n}" for n in range(max(0, total - len(ids)), total)}
        for _ in range(600):  # up to 60 s
            if last_notes <= set(seen):
                break
            await asyncio.sleep(0.1)
        visible_end = max((seen[n] for n in last_notes if n in seen), default=float("nan"))
        stop_watch.set()
        await watcher

        # Convergence: both sides hold the same orders, all OK.
        deadline = time.monotonic() + 60
        while True:
            left = {o["id"]: o for o in await a.everything()}
            right = {o["id"]: o for o in await b.everything()}
            diverged = [
                i for i in left
                if i not in right or left[i]["body"] != right[i]["body"]
                or left[i]["sync_state"] != "OK" or right[i]["sync_state"] != "OK"
            ]  # fmt: skip
            if not diverged or time.monotonic() > deadline:
                for i in diverged[:3]:
                    print(
                        "diverged:",
                        json.dumps(left.get(i)),
                        json.dumps(right.get(i)),
                        file=sys.stderr,
                    )
                break
            await asyncio.sleep(0.2)

        latencies = [seen[n] - committed[n] for n in committed if n in seen]
        return {
            "database": "postgresql" if args.postgres else "sqlite",
            "rate_asked": args.rate,
            "changes": total,
            "errors": len(errors),
            "changes_per_s_sent": round(total / (sent_end - start), 1),
            "changes_per_s_visible_on_b": round(total / (visible_end - start), 1),
            "seen_on_b": len(latencies),
            "overtaken": len(committed) - len(latencies),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
            "diverged": len(diverged),
            # At this rate: the asked rate held, p99 under 1 s, nothing diverged.
            "held": bool(
                latencies and percentile(latencies, 0.99) < 1.0 and not diverged
                and not errors and total / (sent_end - start) >= 0.95 * args.rate
            ),
        }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="changes/s on A")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the load runs")
    parser.add_argument("--orders", type=int, default=200, help="orders changed round-robin")
    parser.add_argument("--pull-every", type=float, default=5.0, help="the pull period (s)")
    parser.add_argument("--poll", type=float, default=0.05, help="B watcher's poll interval")
    parser.add_argument("--postgres", action="store_true", help="two PostgreSQL databases")
    parser.add_argument("--quick", action="store_true", help="100 changes/s for 5 s")
    args = parser.parse_args()
    if args.quick:
        args.rate, args.seconds, args.orders = 100.0, 5.0, 100
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    vhosts = [f"bench-sync-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    pg_names: list[str] = []
    command = [
        sys.executable, "-m", "workmesh.cli", "orders", "pair", "--dir", str(tmp),
        "--vhost-a", vhosts[0], "--vhost-b", vhosts[1],
        "--port-a", str(free_port()), "--port-b", str(free_port()),
    ]  # fmt: skip
    if args.postgres:
        urls, pg_names = asyncio.run(_pg_databases())
        command += ["--database-a", urls[0], "--database-b", urls[1]]
    env = {
        **os.environ,
        "WORKMESH_AMQP_URL": os.environ.get(
            "WORKMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"
        ),
        # Pulls and sweeps run during the load too, as they would in production.
        "WORKMESH_ORDERS_PULL_EVERY": str(args.pull_every),
        "WORKMESH_ORDERS_RESEND_AFTER": "5",
    }
    # A SIGTERM (timeout, Ctrl-C from a supervisor) still stops the pair and cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log = (tmp / "pair.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            print(f"the pair did not start; see {tmp / 'pair.log'}", file=sys.stderr)
            return 1
        result = asyncio.run(run(args, json.loads(line)))
        # The target: that, at 200 changes/s or more.
        result["target_met"] = result["held"] and args.rate >= 200
        print(json.dumps(result, indent=2))
        return 0 if result["target_met"] else 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        for vhost in vhosts:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
        if pg_names:
            asyncio.run(_drop_pg(pg_names))


if __name__ == "__main__":
    sys.exit(main())
