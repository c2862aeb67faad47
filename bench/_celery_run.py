"""The Celery side of the dispatch benchmark: a worker subprocess, a producer in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._celery_app import TASK_NAME, make_app
from bench._common import (
    Burst,
    CpuMeter,
    Latency,
    SystemResult,
    settle_garbage,
    standard_pids,
)

REPO = Path(__file__).resolve().parent.parent
ERROR_MARKERS = ("ERROR", "CRITICAL", "Traceback")


class Receipts:
    """Reads the lines the task body appends: ``phase seq stamp received thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        self.by_phase: dict[str, list[tuple[int, float, float, str]]] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="ascii") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        text = self.partial + chunk
        lines = text.split("\n")
        self.partial = lines.pop()
        for line in lines:
            phase, seq, stamp, received, thread = line.split(" ", 4)
            self.by_phase.setdefault(phase, []).append(
                (int(seq), float(stamp), float(received), thread)
            )

    def count(self, phase: str) -> int:
        self.poll()
        return len(self.by_phase.get(phase, []))


class CeleryWorker:
    def __init__(self, workdir: Path, url: str, confirm: bool, pool: str, concurrency: int) -> None:
        tag = "confirm" if confirm else "noconfirm"
        self.queue = f"bench.celery.{tag}"
        self.out = workdir / f"celery-{tag}.receipts"
        self.log_path = workdir / f"celery-{tag}.worker.log"
        self.command = [
            str(Path(sys.executable).with_name("celery")),
            "-A",
            "bench._celery_app",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            self.queue,
            "-n",
            f"bench-{tag}@%h",
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
        ]
        self.env = dict(os.environ)
        self.env.update(
            BENCH_CELERY_BROKER=url,
            BENCH_CELERY_CONFIRM="1" if confirm else "0",
            BENCH_CELERY_QUEUE=self.queue,
            BENCH_CELERY_OUT=str(self.out),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"the celery worker exited with {self.process.returncode}; see {self.log_path}"
            )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def problems(self) -> list[str]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if any(m in line for m in ERROR_MARKERS)]


def _wait_progress(
    count: Callable[[], int], target: int, stall: float, interval: float
) -> str | None:
    last, last_change = -1, time.monotonic()
    while True:
        now = count()
        if now >= target:
            return None
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > stall:
            return f"stalled at {now}/{target} for {stall:.0f} s"
        time.sleep(interval)


def run_celery(
    workdir: Path,
    url: str,
    confirm: bool,
    pool: str,
    concurrency: int,
    n: int,
    warmup: int,
    rate: float,
    seconds: float,
    log: Any,
) -> SystemResult:
    name = "Celery+confirms" if confirm else "Celery no confirms"
    worker = CeleryWorker(workdir, url, confirm, pool, concurrency)
    result = SystemResult(
        name,
        f"1 worker process, -P {pool} -c {concurrency}, prefetch multiplier 1 "
        f"(prefetch {concurrency}), acks late",
    )
    app = make_app(url, confirm, worker.queue)
    task = app.tasks[TASK_NAME]
    receipts = Receipts(worker.out)

    def counted(phase: str) -> Callable[[], int]:
        def count() -> int:
            worker.alive()
            return receipts.count(phase)

        return count

    def send(phase: str, seq: int) -> None:
        task.apply_async(args=(phase, seq, time.time()), priority=seq % 10)

    worker.start()
    try:
        # Warm-up (also waits for the worker to come up); not measured.
        for seq in range(warmup):
            send("warm", seq)
        stalled = _wait_progress(counted("warm"), warmup, 60, 0.05)
        if stalled:
            result.notes.append(f"warm-up {stalled}")
            return result
        log(f"{name}: worker up")
        settle_garbage()

        burst = Burst(n)
        result.burst = burst
        assert worker.process is not None
        meter = CpuMeter(standard_pids(worker.process.pid, "driver"))
        burst.first_submit = time.time()
        for seq in range(n):
            send("burst", seq)
        burst.submitted_at = time.time()
        burst.stalled = _wait_progress(counted("burst"), n, 20, 0.01)
        burst.cpu = meter.stop()
        rows = receipts.by_phase.get("burst", [])
        burst.received = len(rows)
        burst.last_received = max((r[2] for r in rows), default=0.0)
        per_thread: dict[str, int] = {}
        for row in rows:
            per_thread[row[3]] = per_thread.get(row[3], 0) + 1
        if pool != "solo":
            # Pool threads that got nothing do not show up in the receipts: count them as 0.
            for k in range(concurrency - len(per_thread)):
                per_thread[f"idle-{k}"] = 0
            burst.per_worker = per_thread
        burst.duplicates = len(rows) - len({r[0] for r in rows})
        log(f"{name}: burst {burst.received}/{n} received")

        latency = Latency(rate, seconds)
        result.latency = latency
        total = int(rate * seconds)
        meter = CpuMeter(standard_pids(worker.process.pid, "driver"))
        t0 = time.monotonic()
        for seq in range(total):
            delay = t0 + seq / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send("lat", seq)
        latency.sent = total
        latency.stalled = _wait_progress(counted("lat"), total, 15, 0.02)
        latency.cpu, latency.cpu_window = meter.stop(), meter.elapsed
        latency.samples = [r[2] - r[1] for r in receipts.by_phase.get("lat", [])]
        log(f"{name}: latency {len(latency.samples)}/{total} received")
    finally:
        app.close()
        worker.stop()
        problems = worker.problems()
        if problems:
            result.notes.append(
                f"{len(problems)} error lines in {worker.log_path}; first: {problems[0]}"
            )
    return result
