"""Refer-key rotation at scale: many files renewing at once on a shortened interval.

    .venv/bin/python bench/refer.py               # 10,000 files, 90 s interval (~4 min)
    .venv/bin/python bench/refer.py --quick       # 2,000 files, 18 s: the same rate (~1 min)
    .venv/bin/python bench/refer.py --interval 20 # 10,000 files at 4.5 times the rate

A fresh mesh runs ``workmesh run --role files`` as a subprocess (SQLite in a temp dir, a
RabbitMQ vhost of its own). This process puts N stored files in its database, starts each
file's rotation chain at a moment spread evenly over one interval (as uploads would arrive),
and listens to ``file.refer.renewed`` on workmesh.events like the parser side would.
The renewal rate is files / interval: 10,000 files at the real 90 s is 111 renewals/s; a
shorter interval with the same files is a heavier load than production, and ``--quick`` keeps
the production rate with fewer files so it finishes in a minute.

Lateness of a renewal = when its event reached us - when it was due (the previous key's
``next_renewal_at``; the seeded due time for the first). It includes the event's trip through
RabbitMQ. CPU is the mesh process's (user + system) over the measured window, as a fraction
of one core. The window starts after 1.1 intervals of ramp-up and lasts ``--cycles`` intervals.
Targets (issue 7): 10,000 files rotating, p99 lateness < 1 s, mesh CPU < 25% of one core.
With BENCH_PROFILE=<file> in the environment the mesh runs under cProfile (diagnosis only:
the profiler inflates every figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import add_vhost, delete_vhost, free_port, process_cpu
from models.files import StoredFile

ROTATE_QUEUE = "workmesh.files.rotate"

# What ``workmesh run --role files --no-migrate`` does, with only this capability built (so
# the bench does not depend on every other capability importing cleanly).
LAUNCH = """
import asyncio, logging
from workmesh.files.capability import FilesCapability
from workmesh.files.settings import FilesSettings
from workmesh.runtime import Mesh, _stop_on_signals
from workmesh.settings import Settings

async def main():
    stop = _stop_on_signals()
    mesh = Mesh(Settings.from_env(), "files", [FilesCapability(FilesSettings())])
    await mesh.start()
    try:
        await stop.wait()
    finally:
        await mesh.stop()

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
import os
if os.environ.get("BENCH_PROFILE"):
    import cProfile
    cProfile.run("asyncio.run(main())", os.environ["BENCH_PROFILE"])
else:
    asyncio.run(main())
"""


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


class Mesh:
    def __init__(self, workdir: Path, amqp_url: str, interval: float, lifetime: float) -> None:
        self.workdir = workdir
        self.cli = str(Path(sys.executable).with_name("workmesh"))
        self.port = free_port()
        self.db_url = f"sqlite+aiosqlite:///{workdir / 'wm.db'}"
        self.env = dict(os.environ)
        self.env.update(
            WORKMESH_AMQP_URL=amqp_url,
            WORKMESH_DATABASE_URL=self.db_url,
            WORKMESH_HTTP_PORT=str(self.port),
            WORKMESH_ADMIN_TOKEN=uuid.uuid4().hex,
            WORKMESH_FILES_DIRECTORY=str(workdir / "files"),
            WORKMESH_FILES_REFER_INTERVAL=str(interval),
            WORKMESH_FILES_REFER_LIFETIME=str(lifetime),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def migrate(self) -> None:
        subprocess.run(
            [self.cli, "migrate"], env=self.env, cwd=self.workdir, check=True, capture_output=True
        )

    def start(self) -> None:
        with open(self.workdir / "mesh.stderr.log", "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LAUNCH],
                env=self.env,
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def problems(self) -> list[str]:
        text = (self.workdir / "mesh.stderr.log").read_text(errors="replace")
        return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]


async def seed(db_url: str, n: int, interval: float, lifetime: float) -> list[str]:
    """N stored files with their first key, as the upload's completion leaves them."""
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rows = [
        {
            "id": i,
            "name": f"bench-{k}.bin",
            "size": 1,
            "chunk_size": 1,
            "sha256": "0" * 64,
            "status": "none",
            "uploaded_by": "bench",
            "created_at": now,
            "updated_at": now,
            "stored_at": now,
            "refer_key": uuid.uuid4().hex,
            "refer_generation": 1,
            "refer_started_at": now,
            "refer_expires_at": now + timedelta(seconds=lifetime),
            # Far enough ahead that the mesh's start-up mending leaves these chains alone.
            "refer_next_at": now + timedelta(seconds=lifetime),
        }
        for k, i in enumerate(ids)
    ]
    engine = create_async_engine(db_url)
    async with engine.begin() as connection:
        for start in range(0, n, 1000):
            await connection.execute(insert(StoredFile), rows[start : start + 1000])
    await engine.dispose()
    return ids


async def wait_http(port: int, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError("the mesh did not start serving")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    vhost = f"bench-refer-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    add_vhost(vhost)
    amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-refer-"))
    lifetime = args.interval * (args.cycles + 5)
    mesh = Mesh(workdir, amqp_url, args.interval, lifetime)
    try:
        mesh.migrate()
        ids = await seed(mesh.db_url, args.files, args.interval, lifetime)
        mesh.start()
        await wait_http(mesh.port)
        assert mesh.process is not None
        return await measure(args, amqp_url, mesh.process.pid, ids, mesh)
    finally:
        mesh.stop()
        problems = mesh.problems()
        if problems:
            print(f"mesh log problems ({len(problems)}), kept in {workdir}:", file=sys.stderr)
            for line in problems[:10]:
                print("  " + line, file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        delete_vhost(vhost)


async def measure(
    args: argparse.Namespace, amqp_url: str, pid: int, ids: list[str], mesh: Mesh
) -> dict[str, Any]:
    interval, n = args.interval, args.files
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        events = await channel.get_exchange("workmesh.events")
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(events, "file.refer.renewed")
        due: dict[str, float] = {}
        window: list[float] = []  # lateness of renewals inside the measured window
        counts = {"all": 0}
        window_open = window_close = 0.0

        async def on_renewed(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived = time.time()
            body = json.loads(message.body)
            expected = due.get(body["file_id"])
            counts["all"] += 1
            if expected is not None and window_open <= arrived <= window_close:
                window.append(arrived - expected)
            due[body["file_id"]] = datetime.fromisoformat(body["next_renewal_at"]).timestamp()

        await tap.consume(on_renewed, no_ack=True)
        delay_queue = f"{ROTATE_QUEUE}.delay.{round(interval * 1000)}ms"
        publisher = await connection.channel(publisher_confirms=True)

        # Ramp-up: start the N chains spread evenly over one interval.
        started = time.time()
        window_open = started + interval * 1.1
        window_close = window_open + interval * args.cycles
        step = interval / n
        sends: list[Any] = []
        for k, file_id in enumerate(ids):
            at = started + k * step
            pause = at - time.time()
            if pause > 0:
                await asyncio.gather(*sends)
                sends = []
                await asyncio.sleep(pause)
            first_due = time.time() + interval
            due[file_id] = first_due
            body = {
                "file_id": file_id,
                "generation": 1,
                "due_at": datetime.fromtimestamp(first_due, UTC).isoformat(),
            }
            sends.append(
                publisher.default_exchange.publish(
                    aio_pika.Message(
                        json.dumps(body).encode(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                    ),
                    routing_key=delay_queue,
                )
            )
        await asyncio.gather(*sends)
        await asyncio.sleep(max(0.0, window_open - time.time()))
        cpu_before, wall_before = process_cpu(pid), time.monotonic()
        await asyncio.sleep(max(0.0, window_close - time.time()))
        cpu = (process_cpu(pid) - cpu_before) / (time.monotonic() - wall_before)
        batches = await batch_mean(mesh.port)
        await asyncio.sleep(min(interval, 5))  # late stragglers of the window still count
    expected_in_window = n * args.cycles
    return {
        "files": n,
        "interval": interval,
        "cycles": args.cycles,
        "renewals_in_window": len(window),
        "expected_in_window": expected_in_window,
        "rate": n / interval,
        "p50": percentile(window, 50),
        "p99": percentile(window, 99),
        "max": max(window) if window else None,
        "cpu": cpu,
        "problems": len(mesh.problems()),
        "batch": batches,
    }


async def batch_mean(port: int) -> float | None:
    """The mesh's mean rotation batch size so far, from its /metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    values = {}
    for line in text.splitlines():
        for name in ("sum", "count"):
            if line.startswith(f"workmesh_files_rotation_batch_size_{name} "):
                values[name] = float(line.split()[1])
    if not values.get("count"):
        return None
    return values["sum"] / values["count"]


def report(r: dict[str, Any]) -> None:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} s"

    print(
        f"\nrefer rotation: {r['files']} files, interval {r['interval']} s "
        f"({r['rate']:.0f} renewals/s), measured over {r['cycles']} intervals"
    )
    rows = [
        ("files rotating", f"{r['files']}", "10,000"),
        ("renewals seen in window", f"{r['renewals_in_window']} of ~{r['expected_in_window']}", ""),
        ("lateness p50", s(r["p50"]), ""),
        ("lateness p99", s(r["p99"]), "< 1 s"),
        ("lateness max", s(r["max"]), ""),
        ("mesh CPU, share of one core", f"{100 * r['cpu']:.1f}%", "< 25%"),
        ("mesh CPU per renewal", f"{1000 * r['cpu'] / r['rate']:.2f} ms", ""),
        ("mean rotation batch", "-" if r["batch"] is None else f"{r['batch']:.1f}", ""),
        ("errors in mesh log", str(r["problems"]), "0"),
    ]
    width = max(len(a) for a, _, _ in rows)
    print(f"{'':{width}}  {'measured':>22}  {'target':>8}")
    for name, value, target in rows:
        print(f"{name:{width}}  {value:>22}  {target:>8}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000, help="files rotating (10000)")
    parser.add_argument("--interval", type=float, default=90.0, help="renewal interval, s (90)")
    parser.add_argument("--cycles", type=int, default=1, help="intervals measured (1)")
    parser.add_argument(
        "--quick", action="store_true", help="2000 files, 18 s interval (same rate), 1 cycle"
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.interval, args.cycles = 2000, 18.0, 1
    result = asyncio.run(run(args))
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
