"""The workmesh side of the dispatch benchmark, through its public contract only.

The mesh runs as a subprocess (``workmesh run --no-migrate``); this process holds the producer
and the bots, written in plain aio-pika: each bot has its own connection, consumes its queue
``workmesh.worker.<id>`` with prefetch = capacity, publishes ``task.done`` (persistent, with
publisher confirms) and then acks the assignment, and sends a heartbeat every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage

from bench._common import (
    Burst,
    CpuMeter,
    Latency,
    SystemResult,
    add_vhost,
    create_pg_database,
    delete_vhost,
    drop_pg_database,
    free_port,
    settle_garbage,
    standard_pids,
)

TASKS_EXCHANGE = "workmesh.tasks"
EVENTS_EXCHANGE = "workmesh.events"
TOKEN_HEADER = "x-workmesh-token"
WINDOW = 256  # publishes awaiting confirmation at once
ERROR_MARKERS = (" ERROR ", " CRITICAL ", "Traceback", " WARNING ")


class MeshProcess:
    """Set up a fresh mesh (SQLite in ``workdir``, or the empty database given) and run it as
    a subprocess."""

    def __init__(
        self,
        workdir: Path,
        amqp_url: str,
        workers: int,
        capacity: int,
        database_url: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.cli = str(Path(sys.executable).with_name("workmesh"))
        self.port = free_port()
        self.admin_token = uuid.uuid4().hex
        self.env = dict(os.environ)
        self.env.update(
            WORKMESH_AMQP_URL=amqp_url,
            WORKMESH_DATABASE_URL=database_url or f"sqlite+aiosqlite:///{workdir / 'wm.db'}",
            WORKMESH_HTTP_PORT=str(self.port),
            WORKMESH_ADMIN_TOKEN=self.admin_token,
            WORKMESH_DISPATCH_HEARTBEAT_TIMEOUT="30",
        )
        self.n_workers = workers
        self.capacity = capacity
        self.producer_token = ""
        self.workers: list[dict[str, Any]] = []
        self.stderr_path = workdir / "mesh.stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [self.cli, *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"workmesh {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def setup(self) -> None:
        self._cli("migrate")
        self.producer_token = self._cli("token", "add", "bench", "--role", "producer")
        for i in range(1, self.n_workers + 1):
            line = self._cli(
                "worker", "add", f"bot-{i}", "--capacity", str(self.capacity), "--tier", "active"
            )
            self.workers.append(json.loads(line.splitlines()[-1]))

    def start(self) -> None:
        with (
            open(self.stderr_path, "wb") as stderr,
            open(self.workdir / "mesh.stdout.log", "wb") as out,
        ):
            self.process = subprocess.Popen(
                [self.cli, "run", "--no-migrate"],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=stderr,
            )

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def problems(self) -> list[str]:
        if not self.stderr_path.exists():
            return []
        lines = self.stderr_path.read_text(errors="replace").splitlines()
        return [line for line in lines if any(m in line for m in ERROR_MARKERS)]


@contextlib.contextmanager
def fresh_mesh(
    name: str, host: str, workers: int, capacity: int, postgres: bool, keep: bool
) -> Iterator[tuple[MeshProcess, str]]:
    """A migrated mesh with its workers, running (``workmesh run``) in a RabbitMQ vhost of its
    own and on a fresh SQLite file or PostgreSQL database; everything removed afterwards (the
    work directory kept with ``keep``). Yields the mesh and its AMQP URL."""
    vhost = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    add_vhost(vhost)
    url = f"amqp://guest:guest@{host}/{vhost}"
    workdir = Path(tempfile.mkdtemp(prefix=f"wm-bench-{name}-"))
    database = f"bench_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}" if postgres else None
    database_url = create_pg_database(database) if database else None
    mesh = MeshProcess(workdir, url, workers, capacity, database_url)
    try:
        mesh.setup()
        mesh.start()
        yield mesh, url
    finally:
        mesh.stop()
        delete_vhost(vhost)
        if database:
            drop_pg_database(database)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


class Bot:
    def __init__(self, spec: dict[str, Any], capacity: int) -> None:
        self.id: str = spec["id"]
        self.token: str = spec["token"]
        self.queue_name: str = spec["queue"]
        self.capacity = capacity
        self.inflight = 0
        self.received: dict[str, int] = {}
        self.stamps: dict[str, list[tuple[float, float]]] = {}  # phase -> (stamp, received)
        self.seen: set[str] = set()
        self.duplicates = 0
        self.cancels = 0
        self.queue_waits = 0
        self.errors: list[str] = []
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self, url: str, limit: float = 30.0) -> None:
        self.connection = await aio_pika.connect(url)
        events = await self.connection.channel(publisher_confirms=True)
        self.events = await events.get_exchange(EVENTS_EXCHANGE, ensure=True)
        self._heartbeat = asyncio.create_task(self._beat())
        # The mesh declares the worker queues itself (at its first pool review, which may come
        # a moment after /healthz answers): wait for ours to exist, as a real bot would.
        deadline = time.monotonic() + limit
        while True:
            channel = await self.connection.channel()
            try:
                queue = await channel.get_queue(self.queue_name, ensure=True)
                break
            except aio_pika.exceptions.ChannelNotFoundEntity:
                self.queue_waits += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await channel.set_qos(prefetch_count=self.capacity)
        await queue.consume(self._on_message, no_ack=False)

    async def _publish(self, routing_key: str, body: dict[str, Any]) -> None:
        await self.events.publish(
            aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={TOKEN_HEADER: self.token},
            ),
            routing_key=routing_key,
        )

    async def _beat(self) -> None:
        while True:
            try:
                await self._publish("worker.heartbeat", {"worker_id": self.id})
            except Exception as error:  # keep beating; report at the end
                self.errors.append(f"heartbeat: {error!r}")
            await asyncio.sleep(1.0)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        received = time.time()
        if message.type != "assignment":
            self.cancels += message.type == "cancel"
            await message.ack()
            return
        self.inflight += 1
        try:
            body = json.loads(message.body)
            task_id = body["task_id"]
            if task_id in self.seen:
                self.duplicates += 1
            self.seen.add(task_id)
            payload = body.get("payload") or {}
            phase = str(payload.get("phase", "?"))
            self.received[phase] = self.received.get(phase, 0) + 1
            self.stamps.setdefault(phase, []).append((float(payload.get("stamp", 0)), received))
            await self._publish("task.done", {"task_id": task_id, "worker_id": self.id})
            await message.ack()
        except Exception as error:
            self.errors.append(f"task: {error!r}")
        finally:
            self.inflight -= 1

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self.connection is not None:
            await self.connection.close()


class Producer:
    def __init__(self, token: str) -> None:
        self.token = token

    async def start(self, url: str) -> None:
        self.connection = await aio_pika.connect(url)
        channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await channel.get_exchange(TASKS_EXCHANGE, ensure=True)

    async def submit(self, phase: str, seq: int) -> None:
        priority = seq % 10
        stamp = time.time()
        body = {
            "id": str(uuid.uuid4()),
            "kind": "noop",
            "payload": {"phase": phase, "seq": seq, "stamp": stamp},
            "priority": priority,
        }
        await self.exchange.publish(
            aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=priority,
                headers={TOKEN_HEADER: self.token},
            ),
            routing_key="submit",
        )

    async def burst(self, phase: str, n: int) -> None:
        for start in range(0, n, WINDOW):
            await asyncio.gather(
                *(self.submit(phase, seq) for seq in range(start, min(n, start + WINDOW)))
            )

    async def paced(self, phase: str, rate: float, seconds: float) -> int:
        loop = asyncio.get_running_loop()
        total = int(rate * seconds)
        pending: set[asyncio.Task[None]] = set()
        t0 = loop.time()
        for seq in range(total):
            delay = t0 + seq / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.submit(phase, seq))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        return total

    async def close(self) -> None:
        await self.connection.close()


class Api:
    def __init__(self, base: str, admin_token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {admin_token}"}

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def get(self, path: str) -> Any:
        async with self.session.get(self.base + path, headers=self.headers) as response:
            response.raise_for_status()
            return await response.json()

    async def healthy(self) -> bool:
        try:
            async with self.session.get(self.base + "/healthz") as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def done_count(self) -> int:
        stats = await self.get("/api/v1/stats")
        return int(stats["tasks"]["done"])


async def load_diff(api: Api) -> int:
    """The largest difference between the workers' loads as the mesh reports them (unfinished
    tasks, all workers here have the same capacity); 0 if the API did not answer."""
    try:
        views = (await api.get("/api/v1/workers"))["workers"]
    except (TimeoutError, aiohttp.ClientError):
        return 0
    loads = [int(v["load"]) for v in views]
    return max(loads) - min(loads)


async def _until(check: Any, what: str, limit: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {limit:.0f} s")
        await asyncio.sleep(interval)


async def _wait_progress(count: Any, target: int, stall: float, interval: float) -> str | None:
    """Wait until ``count()`` reaches ``target``; give up after ``stall`` s without progress."""
    last, last_change = -1, time.monotonic()
    while True:
        now = await count()
        if now >= target:
            return None
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > stall:
            return f"stalled at {now}/{target} for {stall:.0f} s"
        await asyncio.sleep(interval)


async def run_workmesh(
    mesh: MeshProcess, amqp_url: str, n: int, warmup: int, rate: float, seconds: float, log: Any
) -> SystemResult:
    result = SystemResult(
        "workmesh",
        f"{mesh.n_workers} aio-pika bots x capacity {mesh.capacity} (prefetch = capacity), "
        "bots + producer in one driver process, mesh in its own",
    )
    bots = [Bot(spec, mesh.capacity) for spec in mesh.workers]
    producer = Producer(mesh.producer_token)
    async with Api(mesh.base, mesh.admin_token) as api:

        async def process_alive() -> None:
            if mesh.process is not None and mesh.process.poll() is not None:
                raise RuntimeError(
                    f"the mesh exited with {mesh.process.returncode}; see {mesh.stderr_path}"
                )

        async def healthy() -> bool:
            await process_alive()
            return await api.healthy()

        await _until(healthy, "mesh /healthz", 60, 0.2)
        await asyncio.gather(*(bot.start(amqp_url) for bot in bots))
        await producer.start(amqp_url)

        async def all_online() -> bool:
            views = (await api.get("/api/v1/workers"))["workers"]
            return sum(bool(v["online"]) for v in views) >= len(bots)

        await _until(all_online, "workers online", 30, 0.2)
        log(f"workmesh: mesh healthy, {len(bots)} bots online")
        waited = max(bot.queue_waits for bot in bots)
        if waited:
            result.notes.append(
                f"worker queues did not exist yet when /healthz first answered 200; bots "
                f"retried the passive declare up to {waited}x (every 0.1 s) before consuming"
            )

        def received(phase: str) -> int:
            return sum(bot.received.get(phase, 0) for bot in bots)

        async def counted(phase: str) -> int:
            await process_alive()
            return received(phase)

        # Warm-up, not measured.
        await producer.burst("warm", warmup)
        stalled = await _wait_progress(lambda: counted("warm"), warmup, 20, 0.05)
        if stalled:
            result.notes.append(f"warm-up {stalled}")
            return result
        done_base = warmup
        stalled = await _wait_progress(api.done_count, done_base, 20, 0.05)
        if stalled:
            result.notes.append(f"warm-up (mesh done count) {stalled}")
            return result
        settle_garbage()

        # Burst.
        burst = Burst(n)
        result.burst = burst
        max_inflight_diff = 0
        max_load_diff = 0
        sampling = True

        async def sample_bots() -> None:
            nonlocal max_inflight_diff
            while sampling:
                loads = [bot.inflight for bot in bots]
                max_inflight_diff = max(max_inflight_diff, max(loads) - min(loads))
                await asyncio.sleep(0.005)

        async def sample_mesh() -> None:
            nonlocal max_load_diff
            while sampling:
                max_load_diff = max(max_load_diff, await load_diff(api))
                await asyncio.sleep(0.5)

        samplers = [asyncio.create_task(sample_bots()), asyncio.create_task(sample_mesh())]

        async def submit_burst() -> None:
            await producer.burst("burst", n)
            burst.submitted_at = time.time()

        assert mesh.process is not None
        meter = CpuMeter(standard_pids(mesh.process.pid, "driver"))
        burst.first_submit = time.time()
        submit = asyncio.create_task(submit_burst())
        burst.stalled = await _wait_progress(lambda: counted("burst"), n, 20, 0.01)
        burst.cpu = meter.stop()
        await submit
        sampling = False
        await asyncio.gather(*samplers)
        burst.received = received("burst")
        burst.last_received = max(
            (t for bot in bots for _, t in bot.stamps.get("burst", [])), default=0.0
        )
        burst.per_worker = {bot.id: bot.received.get("burst", 0) for bot in bots}
        burst.max_inflight_diff = max_inflight_diff
        burst.max_load_diff = max_load_diff
        if burst.stalled is None:
            target = done_base + n
            stalled = await _wait_progress(api.done_count, target, 20, 0.02)
            if stalled:
                burst.stalled = f"mesh done count {stalled}"
            else:
                burst.last_done = time.time()
        log(f"workmesh: burst {burst.received}/{n} received")

        # Paced latency.
        latency = Latency(rate, seconds)
        result.latency = latency
        latency.max_load_diff = 0

        async def sample_paced() -> None:
            assert latency.max_load_diff is not None
            while sampling:
                latency.max_load_diff = max(latency.max_load_diff, await load_diff(api))
                await asyncio.sleep(0.5)

        sampling = True
        paced_sampler = asyncio.create_task(sample_paced())
        meter = CpuMeter(standard_pids(mesh.process.pid, "driver"))
        latency.sent = await producer.paced("lat", rate, seconds)
        sampling = False
        await paced_sampler
        latency.stalled = await _wait_progress(lambda: counted("lat"), latency.sent, 15, 0.02)
        latency.cpu, latency.cpu_window = meter.stop(), meter.elapsed
        latency.samples = [r - s for bot in bots for s, r in bot.stamps.get("lat", [])]
        log(f"workmesh: latency {len(latency.samples)}/{latency.sent} received")

        # Sanity: the mesh's own count, duplicates, cancellations, bot errors.
        with contextlib.suppress(Exception):
            await _wait_progress(api.done_count, warmup + n + latency.sent, 10, 0.05)
        stats = await api.get("/api/v1/stats")
        result.notes.append(f"mesh task counts at the end: {stats['tasks']}")
        duplicates = sum(bot.duplicates for bot in bots)
        if duplicates:
            result.notes.append(f"bots received {duplicates} duplicate assignments")
        cancels = sum(bot.cancels for bot in bots)
        if cancels:
            result.notes.append(f"bots received {cancels} cancel notices")
        for bot in bots:
            for error in bot.errors[:3]:
                result.notes.append(f"{bot.id} error: {error}")
        burst.duplicates = duplicates
    await producer.close()
    await asyncio.gather(*(bot.close() for bot in bots))
    return result
