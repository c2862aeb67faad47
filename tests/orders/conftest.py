"""Fixtures for the order sync: two instances A and B, each with its own database and its own
RabbitMQ vhost, talking to each other through TCP proxies that a test can take down (the
peer "goes away"), and a fake peer that records what an instance sends."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from schemas.orders import MAX_SNAPSHOTS
from tests.conftest import (
    ADMIN_TOKEN,
    DATABASES,
    PG_ADMIN_URL,
    RABBIT_HOST,
    _rabbitmqctl,
    eventually,
    free_port,
    make_settings,
)
from workmesh.db import create_engine, migrate, session_factory
from workmesh.orders.capability import OrdersCapability
from workmesh.orders.settings import OrdersSettings
from workmesh.runtime import Mesh
from workmesh.security import Role
from workmesh.services.tokens import create_api_token

FAST: dict[str, Any] = {
    "resend_after": 1.0,
    "sweep_every": 0.3,
    "pull_every": 0.5,
    "pull_overlap": 2.0,
    "http_attempts": 2,
    "http_timeout": 3.0,
    "shards": 2,
}


class Proxy:
    """A TCP proxy to ``target``; ``down()`` refuses and cuts every connection, ``up()``
    serves again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


def _vhost() -> str:
    vhost = f"wm-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


@pytest.fixture
def two_vhosts() -> Iterator[tuple[str, str]]:
    vhosts = (_vhost(), _vhost())
    yield tuple(f"amqp://guest:guest@{RABBIT_HOST}:5672/{v}" for v in vhosts)  # type: ignore[misc]
    for vhost in vhosts:
        subprocess.Popen(
            ["rabbitmqctl", "-q", "delete_vhost", vhost],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture(params=DATABASES)
async def two_databases(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    """Two new, migrated databases of the same kind (SQLite files or PostgreSQL databases)."""
    if request.param == "sqlite":
        urls = tuple(f"sqlite+aiosqlite:///{tmp_path / f'{n}.db'}" for n in "ab")
        for url in urls:
            await asyncio.to_thread(migrate, url)
        yield urls  # type: ignore[misc]
        return
    names = [f"wm_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL)
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({error})", pytrace=False)
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        pg_urls = tuple(f"{base}/{name}" for name in names)
        for url in pg_urls:
            await asyncio.to_thread(migrate, url)
        yield pg_urls  # type: ignore[misc]
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def make_token(database_url: str, name: str) -> str:
    from workmesh.settings import DatabaseSettings

    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        async with session_factory(engine)() as session, session.begin():
            return await create_api_token(session, name, Role.PRODUCER)
    finally:
        await engine.dispose()


class Instance:
    """One running instance: its mesh, its orders capability, and the proxy in front of it."""

    def __init__(self, name: str, amqp_url: str, database_url: str) -> None:
        self.name = name
        self.amqp_url = amqp_url
        self.database_url = database_url
        self.settings = make_settings(amqp_url, database_url)
        self.proxy = Proxy(self.settings.http.port)
        self.mesh: Mesh | None = None
        self.orders: OrdersCapability | None = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings.http.port}"

    async def start(self, peer_url: str, peer_token: str, **overrides: Any) -> None:
        self.orders = OrdersCapability(
            OrdersSettings(
                instance=self.name, peer_url=peer_url, peer_token=peer_token,
                **{**FAST, **overrides},
            )
        )  # fmt: skip
        self.mesh = Mesh(self.settings, "orders", [self.orders])
        await self.mesh.start()
        await self.proxy.up()

    async def stop(self) -> None:
        await self.proxy.down()
        if self.mesh is not None:
            await self.mesh.stop()
            self.mesh = None

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kwargs.pop("headers", {})}
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def order(self, order_id: str) -> dict[str, Any]:
        status, body = await self.api("GET", f"/api/v1/orders/{order_id}")
        assert status == 200, body
        return dict(body)

    async def all_orders(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            status, body = await self.api("GET", "/api/v1/orders", params=params)
            assert status == 200, body
            found.update({o["id"]: o for o in body["orders"]})
            cursor = body["next"]
            if cursor is None:
                return found


class Pair:
    def __init__(self, a: Instance, b: Instance) -> None:
        self.a, self.b = a, b

    async def settled(self, *order_ids: str, timeout: float = 15.0) -> None:
        """Wait until both sides hold the same orders, none waiting for an answer."""

        async def same() -> bool:
            left, right = await self.a.all_orders(), await self.b.all_orders()
            ids = order_ids or tuple(set(left) | set(right))
            return all(_agree(left.get(i), right.get(i)) for i in ids)

        await eventually(same, timeout=timeout, every=0.1, message="both sides settled")


SETTLED = {"OK", "DEL_SYNCED", "COLLISION", "ERROR_SYNCED"}


def _agree(left: dict[str, Any] | None, right: dict[str, Any] | None) -> bool:
    if left is None or right is None:
        return False
    if left["sync_state"] not in SETTLED or left["sync_state"] != right["sync_state"]:
        return False
    if left["sync_state"] in ("OK", "DEL_SYNCED"):
        return bool(left["body"] == right["body"] and left["deleted"] == right["deleted"])
    if left["sync_state"] == "COLLISION":
        # Each side keeps both versions: its own, and the other's as "theirs".
        return bool(
            left["theirs"] == {"body": right["body"], "deleted": right["deleted"]}
            and right["theirs"] == {"body": left["body"], "deleted": left["deleted"]}
        )
    return True


@pytest.fixture
async def pair(
    request: pytest.FixtureRequest, two_vhosts: tuple[str, str], two_databases: tuple[str, str]
) -> AsyncIterator[Pair]:
    """A and B running. ``@pytest.mark.pair(a={...}, b={...}, a_pushes=True, one_vhost=False)``
    overrides each side's OrdersSettings; ``a_pushes=False`` gives A no peer URL (B must
    pull); ``one_vhost=True`` puts both on one vhost."""
    marker = request.node.get_closest_marker("pair")
    options: dict[str, Any] = marker.kwargs if marker is not None else {}
    a = Instance("A", two_vhosts[0], two_databases[0])
    # one_vhost: both instances on A's vhost, as compose runs them (names carry the instance).
    b = Instance("B", two_vhosts[0 if options.get("one_vhost") else 1], two_databases[1])
    token_for_a = await make_token(two_databases[1], "peer-A")  # A's token, kept by B
    token_for_b = await make_token(two_databases[0], "peer-B")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        a.http = b.http = http
        try:
            a_peer = b.proxy.url if options.get("a_pushes", True) else ""
            await a.start(a_peer, token_for_a, **options.get("a", {}))
            await b.start(a.proxy.url, token_for_b, **options.get("b", {}))
            yield Pair(a, b)
        finally:
            await a.stop()
            await b.stop()


class FakePeer:
    """An aiohttp server in the peer's place: records every snapshot sent to it, one by one
    (PUT .../{id}/sync) or in a batch (POST .../sync, with the real endpoint's limits)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[str, dict[str, Any]]] = []
        # Each batch request's flags (everything but the snapshots), as sent.
        self.batches: list[dict[str, Any]] = []
        # What the peer answers in a batch's response, by order id (when asked for answers).
        self.answers: dict[str, Any] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()

        async def sync(request: web.Request) -> web.Response:
            self.received.append((request.match_info["id"], await request.json()))
            return web.json_response({"outcome": "applied"})

        async def sync_many(request: web.Request) -> web.Response:
            batch = await request.json()
            snapshots = batch.pop("snapshots", None)
            if not isinstance(snapshots, list) or not 1 <= len(snapshots) <= MAX_SNAPSHOTS:
                return web.json_response({"error": "snapshots: 1 to 500 of them"}, status=422)
            self.batches.append(batch)
            results = []
            for snap in snapshots:
                order_id = snap.pop("id")
                self.received.append((order_id, snap))
                result = {"id": order_id, "outcome": "applied"}
                if batch.get("answers") and order_id in self.answers:
                    result["answer"] = self.answers[order_id]
                results.append(result)
            return web.json_response({"results": results})

        async def listing(request: web.Request) -> web.Response:
            return web.json_response({"orders": [], "next": None})

        app.router.add_put("/api/v1/orders/{id}/sync", sync)
        app.router.add_post("/api/v1/orders/sync", sync_many)
        app.router.add_get("/api/v1/orders", listing)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def sent(self, order_id: str) -> list[dict[str, Any]]:
        return [snap for i, snap in self.received if i == order_id]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pair(a=, b=, a_pushes=, one_vhost=): options of the pair fixture"
    )


@contextlib.asynccontextmanager
async def facing_fake_peer(
    amqp_url: str, database_url: str, **overrides: Any
) -> AsyncIterator[tuple[Instance, FakePeer]]:
    """Instance A (FAST settings, with ``overrides``) whose peer is a ``FakePeer``."""
    peer = FakePeer()
    await peer.start()
    instance = Instance("A", amqp_url, database_url)
    instance.settings = make_settings(amqp_url, database_url)
    settings = OrdersSettings(
        instance="A", peer_url=peer.url, peer_token="t", **{**FAST, **overrides}
    )
    instance.orders = OrdersCapability(settings)
    instance.mesh = Mesh(instance.settings, "orders", [instance.orders])
    try:
        async with aiohttp.ClientSession() as http:
            instance.http = http
            await instance.mesh.start()
            try:
                yield instance, peer
            finally:
                await instance.mesh.stop()
    finally:
        await peer.stop()
