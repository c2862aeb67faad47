"""A capability plugs into a mesh process: its routes are served, its subscribers consume,
it starts after the broker and stops before it; ``--role <name>`` runs it alone."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from aiohttp import web
from faststream.rabbit import RabbitQueue

from tests.conftest import Harness, eventually, make_settings
from workmesh.capabilities import MeshContext
from workmesh.runtime import Mesh, Role


class Echo:
    """A capability that records what it hears on a queue and serves it over HTTP."""

    name = "echo"

    def __init__(self) -> None:
        self.heard: list[dict[str, Any]] = []
        self.calls: list[str] = []

    def attach(self, mesh: MeshContext, app: web.Application) -> None:
        self.calls.append("attach")

        @mesh.broker.subscriber(RabbitQueue("test.echo", durable=True))
        async def hear(body: dict[str, Any]) -> None:
            self.heard.append(body)

        app.router.add_get("/echo", self._list)

    async def _list(self, _request: web.Request) -> web.Response:
        return web.json_response(self.heard)

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


@pytest.mark.e2e
async def test_capability_consumes_and_serves_in_its_own_role(harness: Harness) -> None:
    echo = Echo()
    mesh = await harness.start("echo", capabilities=[echo])
    assert mesh.dispatcher is None
    assert echo.calls == ["attach", "start"]
    connection = await aio_pika.connect(harness.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"n": 1}', content_type="application/json"), "test.echo"
        )

    async def heard() -> bool:
        status, body = await harness.api("GET", "/echo", token=None)
        return status == 200 and body == [{"n": 1}]

    await eventually(heard, message="the capability's consumer and route")
    # The task API is the api role's, not the capability's.
    status, _ = await harness.api("GET", "/api/v1/tasks")
    assert status == 404
    await mesh.stop()
    harness.meshes.remove(mesh)
    assert echo.calls == ["attach", "start", "stop"]


@pytest.mark.e2e
async def test_core_roles_leave_capabilities_out(harness: Harness) -> None:
    echo = Echo()
    await harness.start(Role.API, capabilities=[echo])
    assert echo.calls == []


def test_unknown_role_is_refused_with_the_known_ones() -> None:
    settings = make_settings("amqp://guest:guest@127.0.0.1/", "sqlite+aiosqlite:///:memory:")
    with pytest.raises(ValueError, match="unknown role 'nope'; roles: all, api, dispatcher, echo"):
        Mesh(settings, "nope", [Echo()])
