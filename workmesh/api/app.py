"""The aiohttp application: routes for the api role, /metrics and /healthz for every role."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from workmesh.api import tasks, tokens, workers
from workmesh.api.bus import BUS, ApiBus
from workmesh.api.common import (
    METRICS,
    SESSIONS,
    SETTINGS,
    STATUS_COUNTS,
    WRITES,
    errors_and_auth,
)
from workmesh.metrics import Metrics
from workmesh.services import announcements
from workmesh.services.counts import StatusCounts
from workmesh.services.group_commit import GroupCommit
from workmesh.settings import Settings

HealthCheck = Callable[[], Awaitable[dict[str, bool]]]
HEALTH = web.AppKey("health", list[HealthCheck])


def build_app(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    metrics: Metrics,
    bus: ApiBus | None,
    health: list[HealthCheck],
) -> web.Application:
    """``bus`` is None for roles that serve only /metrics and /healthz."""
    app = web.Application(middlewares=[errors_and_auth], client_max_size=2 * 1024 * 1024)
    app[SETTINGS], app[SESSIONS], app[METRICS], app[HEALTH] = settings, sessions, metrics, health
    app[STATUS_COUNTS] = StatusCounts()
    if bus is not None:
        app[BUS] = bus
        app[WRITES] = GroupCommit(sessions)
        app[tasks.OUTBOX] = announcements.Outbox(sessions)
        app.on_cleanup.append(_close_writes)
        app.add_routes(tasks.routes)
        app.add_routes(workers.routes)
        app.add_routes(tokens.routes)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _close_writes(app: web.Application) -> None:
    await app[WRITES].close()
    await app[tasks.OUTBOX].close()


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    checks: dict[str, bool] = {}
    for check in request.app[HEALTH]:
        checks.update(await check())
    healthy = all(checks.values())
    return web.json_response({"ok": healthy, **checks}, status=200 if healthy else 503)
