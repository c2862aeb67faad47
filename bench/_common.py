"""Shared bits of the dispatch benchmark: results, percentiles, vhosts, free ports."""

from __future__ import annotations

import functools
import gc
import math
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field


@dataclass
class Burst:
    n: int
    first_submit: float = 0.0
    submitted_at: float = 0.0  # the producer finished (all confirmed, where confirms are on)
    last_received: float = 0.0
    last_done: float | None = None  # workmesh: the mesh's own record shows all N done
    received: int = 0
    per_worker: dict[str, int] = field(default_factory=dict)
    max_inflight_diff: int | None = None  # sampled on the workers' side
    max_load_diff: int | None = None  # sampled from the mesh's view (GET /api/v1/workers)
    duplicates: int = 0
    stalled: str | None = None
    # CPU used by each process over the burst (first submit to last received), % of one core.
    cpu: dict[str, float] = field(default_factory=dict)

    def rate(self, end: float | None) -> float | None:
        if end is None or end <= self.first_submit or self.received < self.n:
            return None
        return self.n / (end - self.first_submit)

    @property
    def received_rate(self) -> float | None:
        return self.rate(self.last_received)

    @property
    def done_rate(self) -> float | None:
        return self.rate(self.last_done)

    @property
    def submit_rate(self) -> float | None:
        return self.rate(self.submitted_at)

    @property
    def imbalance(self) -> int | None:
        if not self.per_worker:
            return None
        return max(self.per_worker.values()) - min(self.per_worker.values())


@dataclass
class Latency:
    rate: float
    seconds: float
    sent: int = 0
    samples: list[float] = field(default_factory=list)  # seconds, receive - stamp
    stalled: str | None = None
    max_load_diff: int | None = None  # sampled from the mesh's view, as in the burst
    # CPU used by each process from the first paced submit until all were received, % of one
    # core, and that window's length (s): at a paced rate the rate is fixed, so what shows the
    # machine's headroom is how busy it is and what each task costs.
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_window: float = 0.0

    def percentile(self, p: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


@dataclass
class SystemResult:
    name: str
    setup: str
    burst: Burst | None = None
    latency: Latency | None = None
    notes: list[str] = field(default_factory=list)


MACHINE = -1  # a pseudo pid: every core of the machine


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by ``pid`` (default: this process)."""
    if pid == MACHINE:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the ")" closing the command name: state is field 3, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of some processes over a window, as % of one core."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.start = time.monotonic()
        self.elapsed = 0.0
        self.before = {name: process_cpu(pid) for name, pid in pids.items()}

    def stop(self) -> dict[str, float]:
        elapsed = self.elapsed = max(time.monotonic() - self.start, 1e-9)
        return {
            name: 100 * (process_cpu(pid) - self.before[name]) / elapsed
            for name, pid in self.pids.items()
        }


@functools.cache
def rabbitmq_pid() -> int | None:
    """The local RabbitMQ node's OS pid, to meter its CPU; None if it cannot be had."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "eval", "os:getpid()."],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        pid = int(done.stdout.strip().strip('"'))
        os.stat(f"/proc/{pid}/stat")
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return pid


def standard_pids(server: int, driver_label: str) -> dict[str, int | None]:
    pids: dict[str, int | None] = {"server": server, driver_label: None}
    rabbit = rabbitmq_pid()
    if rabbit is not None:
        pids["rabbitmq"] = rabbit
    pids["machine"] = MACHINE
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60)


def add_vhost(name: str) -> None:
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


# PostgreSQL for the benches that take --postgres: a fresh database per mesh, dropped after.
PG_ADMIN_URL = os.environ.get("WORKMESH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_admin(statement: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(statement)
        finally:
            await admin.close()

    asyncio.run(run())


def create_pg_database(name: str) -> str:
    """Create database ``name``; returns its SQLAlchemy (asyncpg) URL."""
    _pg_admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settle_garbage() -> None:
    """Collect once and freeze what the driver has set up, before a measured phase.

    The driver (bots, producer, sampled figures) holds many long-lived objects; a full
    collection that walks them took 25 - 35 ms here, and one landing in a latency phase would
    show as a driver pause in the system under test's tail.
    """
    gc.collect()
    gc.freeze()
