"""Fixtures: a fresh RabbitMQ vhost and a fresh database (SQLite and PostgreSQL) per test,
the mesh running in-process, and plain aio-pika bots as its workers.

RabbitMQ and PostgreSQL must be there: a test that needs one fails with a clear message when
it is missing; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.bots import Bot
from workmesh.capabilities import Capability
from workmesh.db import migrate
from workmesh.runtime import Mesh, Role
from workmesh.settings import (
    AmqpSettings,
    ChannelSettings,
    DatabaseSettings,
    DispatchSettings,
    HttpSettings,
    SecuritySettings,
    Settings,
)

RABBIT_HOST = os.environ.get("WORKMESH_TEST_RABBIT_HOST", "127.0.0.1")
PG_ADMIN_URL = os.environ.get("WORKMESH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DATABASES = [
    d for d in os.environ.get("WORKMESH_TEST_DATABASES", "sqlite,postgresql").split(",") if d
]
ADMIN_TOKEN = "test-admin-token-" + uuid.uuid4().hex


def _rabbitmqctl(*args: str) -> None:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"rabbitmqctl {' '.join(args)} failed (is RabbitMQ running? run "
            f"scripts/test.sh, which starts it): {result.stderr.strip()}",
            pytrace=False,
        )


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A vhost of its own for each test, so fixed queue names never meet across tests."""
    vhost = f"wm-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@{RABBIT_HOST}:5672/{vhost}"
    # Deleting takes half a second; let it run while the next test starts.
    subprocess.Popen(
        ["rabbitmqctl", "-q", "delete_vhost", vhost],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(params=DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new, migrated database: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'workmesh.db'}"
        await asyncio.to_thread(migrate, url)
        yield url
        return
    name = f"wm_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL)
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({error}); run "
            "scripts/test.sh, which starts it",
            pytrace=False,
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        url = f"{base}/{name}"
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(
    amqp_url: str, database_url: str, channels: dict[str, Any] | None = None, **dispatch: Any
) -> Settings:
    defaults: dict[str, Any] = {
        "heartbeat_timeout": 3.0,
        "review_interval": 0.1,
        "retry_delays": [0.2, 0.4],
        "reserve_idle": 0.5,
        "orphan_after": 30.0,
    }
    return Settings(
        amqp=AmqpSettings(url=amqp_url),
        database=DatabaseSettings(url=database_url),
        http=HttpSettings(host="127.0.0.1", port=free_port()),
        dispatch=DispatchSettings(**{**defaults, **dispatch}),
        security=SecuritySettings(admin_token=ADMIN_TOKEN),
        channels=ChannelSettings(**(channels or {})),
    )


class Harness:
    """A running mesh and what a test needs around it."""

    def __init__(self, amqp_url: str, database_url: str, http: aiohttp.ClientSession) -> None:
        self.amqp_url = amqp_url
        self.database_url = database_url
        self.http = http
        self.meshes: list[Mesh] = []
        self.bots: list[Bot] = []
        self.settings: Settings | None = None

    async def start(
        self,
        role: str = Role.ALL,
        capabilities: list[Capability] | None = None,
        channels: dict[str, Any] | None = None,
        **dispatch: Any,
    ) -> Mesh:
        """Start a mesh process; only the ``capabilities`` given run (none by default)."""
        self.settings = make_settings(self.amqp_url, self.database_url, channels, **dispatch)
        mesh = Mesh(self.settings, role, capabilities or [])
        await mesh.start()
        self.meshes.append(mesh)
        if mesh.dispatcher is not None:
            await asyncio.wait_for(mesh.dispatcher.ready.wait(), 10)
        return mesh

    @property
    def base(self) -> str:
        assert self.settings is not None
        return f"http://127.0.0.1:{self.meshes[0].settings.http.port}"

    async def api(
        self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            body = (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )
            return resp.status, body

    async def add_worker(self, worker_id: str, capacity: int = 1, tier: str = "active") -> str:
        status, body = await self.api(
            "POST", "/api/v1/workers", json={"id": worker_id, "capacity": capacity, "tier": tier}
        )
        assert status == 201, body
        return str(body["token"])

    async def producer_token(self, name: str = "producer") -> str:
        from workmesh.security import Role as TokenRole
        from workmesh.services.tokens import create_api_token

        mesh = self.meshes[0]
        async with mesh.sessions() as session, session.begin():
            return await create_api_token(session, name, TokenRole.PRODUCER)

    async def bot(
        self, worker_id: str, capacity: int = 1, tier: str = "active", mode: str = "done"
    ) -> Bot:
        token = await self.add_worker(worker_id, capacity, tier)
        bot = Bot(self.amqp_url, worker_id, token, capacity=capacity, mode=mode)  # type: ignore[arg-type]
        await bot.start()
        self.bots.append(bot)
        return bot

    async def wait_task(self, task_id: str, message: str, **expected: Any) -> None:
        """Wait until the API shows the task with every field as ``expected``."""

        async def matches() -> bool:
            _, task = await self.api("GET", f"/api/v1/tasks/{task_id}")
            return all(task.get(k) == v for k, v in expected.items())

        await eventually(matches, message=message)

    async def wait_online(self, *worker_ids: str, online: bool = True) -> None:
        async def all_there() -> bool:
            _, body = await self.api("GET", "/api/v1/workers")
            state = {w["id"]: w["online"] for w in body["workers"]}
            return all(state.get(w) is online for w in worker_ids)

        await eventually(all_there, message=f"workers {worker_ids} online={online}")

    async def close(self) -> None:
        for bot in self.bots:
            await bot.stop()
        for mesh in self.meshes:
            await mesh.stop()


@pytest.fixture
async def harness(amqp_url: str, database_url: str) -> AsyncIterator[Harness]:
    # A request that hangs should fail the test with a place, not stall the whole run.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        harness = Harness(amqp_url, database_url, http)
        try:
            yield harness
        finally:
            await harness.close()


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    timeout: float = 10.0,
    every: float = 0.05,
    message: str = "condition",
) -> None:
    """Wait until ``check`` holds; fail with ``message`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {message}")
        await asyncio.sleep(every)
