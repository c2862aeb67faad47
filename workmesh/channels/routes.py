"""HTTP routes of the worker channels: long/short poll, WebSocket, notification settings."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from aiohttp import web

from models import Worker
from schemas.workers import NotificationSettings, NotificationView
from workmesh.api.common import (
    PRINCIPAL,
    SESSIONS,
    TOKEN,
    ApiError,
    json_response,
    principal,
    read_body,
)
from workmesh.channels.websocket import WorkerSession, identify
from workmesh.security import Role

if TYPE_CHECKING:
    from workmesh.channels.service import WorkerChannels

routes = web.RouteTableDef()
CHANNELS: web.AppKey[WorkerChannels] = web.AppKey("channels")

MAX_LIMIT = 100


@routes.get("/api/v1/worker/tasks")
async def poll(request: web.Request) -> web.Response:
    """The worker's next assignments: at once (``wait=0``), or as soon as one is made."""
    who = principal(request, Role.WORKER)
    channels = request.app[CHANNELS]
    longest = channels.settings.channels.max_wait
    try:
        wait = float(request.query.get("wait", "0"))
        limit = int(request.query.get("limit", "10"))
    except ValueError:
        raise ApiError(400, "wait must be a number of seconds; limit a whole number") from None
    if not 0 <= wait <= longest:
        raise ApiError(400, f"wait must be between 0 and {longest:g} seconds")
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be between 1 and {MAX_LIMIT}")
    deliveries = await channels.take(who.name, limit, wait)
    return json_response(
        {
            "assignments": [d.body for d in deliveries if d.kind == "assignment"],
            "cancelled": [d.body["task_id"] for d in deliveries if d.kind == "cancel"],
        }
    )


@routes.get("/api/v1/worker/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    who = request.get(PRINCIPAL)  # set when an Authorization header came with the upgrade
    if who is not None and who.role is not Role.WORKER:
        raise ApiError(403, "this needs a worker's token")
    socket = web.WebSocketResponse(heartbeat=20.0)
    await socket.prepare(request)
    if who is not None:
        worker_id, token = who.name, request[TOKEN]
    else:
        identity = await identify(socket, request.app)
        if identity is None:
            return socket
        worker_id, token = identity
    channels = request.app[CHANNELS]
    session = WorkerSession(
        socket, request.app, channels.connection, channels.mailbox, worker_id, token
    )
    await session.run()
    return socket


@routes.put("/api/v1/workers/{worker_id}/notifications")
async def set_notifications(request: web.Request) -> web.Response:
    who = principal(request, Role.ADMIN, Role.WORKER)
    worker_id = request.match_info["worker_id"]
    if who.role is Role.WORKER and who.name != worker_id:
        raise ApiError(403, "a worker may set only its own notifications")
    body = await read_body(request, NotificationSettings)
    made: str | None = None
    async with request.app[SESSIONS]() as session, session.begin():
        worker = await session.get(Worker, worker_id)
        if worker is None or worker.removed_at is not None:
            raise ApiError(404, f"no worker {worker_id!r}")
        worker.webhook_url = str(body.webhook_url) if body.webhook_url else None
        worker.email = body.email
        if worker.webhook_url and (body.new_secret or not worker.webhook_secret):
            made = worker.webhook_secret = secrets.token_urlsafe(32)
    request.app[CHANNELS].notifier.settings_changed()
    view = NotificationView(
        worker_id=worker_id, webhook_url=worker.webhook_url, email=worker.email, webhook_secret=made
    )
    return json_response(view)
