"""Worker routes: register (admin), list and read, heartbeats, and the mesh's stats."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.workers import WorkerCreate, WorkerUpdate
from workmesh.api.bus import BUS
from workmesh.api.common import (
    SESSIONS,
    STATUS_COUNTS,
    WRITES,
    ApiError,
    json_response,
    principal,
    read_body,
)
from workmesh.security import Role
from workmesh.services import tasks, workers

log = logging.getLogger(__name__)
T = TypeVar("T")
routes = web.RouteTableDef()


@routes.post("/api/v1/workers")
async def add_worker(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    spec = await read_body(request, WorkerCreate)
    async with request.app[SESSIONS]() as session, session.begin():
        try:
            token = await workers.create_worker(session, spec)
        except workers.WorkerExists as error:
            raise ApiError(409, str(error)) from None
    try:
        await request.app[BUS].declare_worker_queue(spec.id)
    except Exception:
        # The worker is stored and its token must reach the caller; the dispatcher's
        # review declares the queue anyway.
        log.warning("queue for worker %s not declared yet", spec.id, exc_info=True)
    return json_response(
        {
            **spec.model_dump(mode="json"),
            "token": token,
            "queue": f"workmesh.worker.{spec.id}",
            "note": "the token is shown once; keep it",
        },
        status=201,
    )


async def _change_worker(
    request: web.Request, change: Callable[[AsyncSession, str], Awaitable[T]]
) -> T:
    """Apply an admin's change to the worker the path names, in one transaction; 404 if it is
    unknown (or removed)."""
    worker_id = request.match_info["worker_id"]
    async with request.app[SESSIONS]() as session, session.begin():
        try:
            return await change(session, worker_id)
        except workers.UnknownWorker as error:
            raise ApiError(404, str(error)) from None


@routes.post("/api/v1/workers/{worker_id}/token")
async def replace_token(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    token = await _change_worker(request, workers.replace_worker_token)
    return json_response(
        {
            "id": request.match_info["worker_id"],
            "token": token,
            "note": "the token is shown once; the old one is void",
        }
    )


@routes.patch("/api/v1/workers/{worker_id}")
async def change_worker(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    update = await read_body(request, WorkerUpdate)
    view = await _change_worker(
        request, lambda session, id_: workers.update_worker(session, id_, update)
    )
    return json_response(view)


@routes.delete("/api/v1/workers/{worker_id}")
async def remove_worker(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    await _change_worker(request, workers.remove_worker)
    return web.Response(status=204)


@routes.get("/api/v1/workers")
async def list_workers(request: web.Request) -> web.Response:
    principal(request)
    async with request.app[SESSIONS]() as session:
        views = await workers.worker_views(session)
    return json_response({"workers": [v.model_dump(mode="json") for v in views]})


@routes.get("/api/v1/workers/{worker_id}")
async def read_worker(request: web.Request) -> web.Response:
    principal(request)
    async with request.app[SESSIONS]() as session:
        views = await workers.worker_views(session, request.match_info["worker_id"])
    if not views:
        raise ApiError(404, f"no worker {request.match_info['worker_id']!r}")
    return json_response(views[0])


@routes.post("/api/v1/worker/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    who = principal(request, Role.WORKER)
    try:
        await workers.heartbeat_written(request.app[WRITES], who.name)
    except workers.UnknownWorker as error:  # removed since its token was checked
        raise ApiError(404, str(error)) from None
    return web.Response(status=204)


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    principal(request)
    async with request.app[SESSIONS]() as session:
        return json_response(await tasks.stats(session, request.app[STATUS_COUNTS]))
