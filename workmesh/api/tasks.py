"""Task routes: submit, read, list, cancel, and a worker's own status changes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Iterator

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from models import Task, TaskAnnouncement
from schemas.tasks import StatusChange, TaskSubmit, TaskView
from workmesh.api.bus import BUS
from workmesh.api.common import (
    SESSIONS,
    SETTINGS,
    TOKEN,
    WRITES,
    ApiError,
    json_response,
    principal,
    read_body,
)
from workmesh.dispatch.lifecycle import ON_WORKER, LifecycleError, Report, TaskStatus
from workmesh.security import Role
from workmesh.services import announcements, tasks

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

RACED = "the task changed at the same moment; read it and try again"

SUBMITTERS = (Role.ADMIN, Role.PRODUCER)
OUTBOX = web.AppKey("outbox", announcements.Outbox)


def view(task: Task) -> TaskView:
    return TaskView.model_validate(task)


@routes.post("/api/v1/tasks")
async def submit_task(request: web.Request) -> web.Response:
    who = principal(request, *SUBMITTERS)
    body = await read_body(request, TaskSubmit)
    # In a transaction shared with other submissions, hand-outs and status changes.
    outcome = await tasks.submit_shared(
        request.app[WRITES], body, who.name, request.app[SETTINGS].dispatch.max_attempts
    )
    if not outcome.created:
        return json_response(view(outcome.task), status=200)
    try:
        await request.app[BUS].submit(outcome.task, request[TOKEN])
    except Exception:
        # Stored but not yet published: with a note, the leader publishes it within seconds;
        # without (the database failed too), its orphan sweep does once the queues are empty.
        log.exception("task %s stored but not published; the leader will", outcome.task.id)
        try:
            await announcements.unpublished(request.app[SESSIONS], outcome.task.id)
        except Exception:
            log.exception("task %s: no note either; the orphan sweep will find it", outcome.task.id)
        return json_response(view(outcome.task), status=202)
    return json_response(view(outcome.task), status=201)


@routes.get("/api/v1/tasks/{task_id}")
async def read_task(request: web.Request) -> web.Response:
    who = principal(request)
    worker_id = who.name if who.role is Role.WORKER else None
    async with request.app[SESSIONS]() as session:
        task = await _get(session, request.match_info["task_id"], worker_id)
    return json_response(view(task))


@routes.get("/api/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    who = principal(request)
    query = request.query
    try:
        status = TaskStatus(query["status"]) if query.get("status") else None
        limit = int(query.get("limit", "100"))
    except ValueError:
        allowed = ", ".join(s.value for s in TaskStatus)
        raise ApiError(400, f"status must be one of {allowed}; limit a whole number") from None
    if limit < 1:
        raise ApiError(400, "limit must be at least 1")
    worker_id = query.get("worker_id") or None
    if who.role is Role.WORKER:
        if worker_id not in (None, who.name):
            raise ApiError(403, "a worker may list only its own tasks")
        worker_id = who.name
    async with request.app[SESSIONS]() as session:
        found = await tasks.list_tasks(session, status, worker_id, limit)
    return json_response({"tasks": [view(t).model_dump(mode="json") for t in found]})


@routes.post("/api/v1/tasks/{task_id}/cancel")
async def cancel_task(request: web.Request) -> web.Response:
    principal(request, *SUBMITTERS)
    # Around the whole block: the version check (a race lost) runs at commit.
    note = None
    with refusals_as_http():
        async with request.app[SESSIONS]() as session, session.begin():
            task, on_worker = await tasks.cancel(session, request.match_info["task_id"])
            if on_worker is not None:
                note = announcements.record(session, task.id, on_worker, announcements.CANCELLED)
    if note is not None and on_worker is not None:  # it was on a worker, who must be told
        await announce(request.app, task.id, note, request.app[BUS].cancelled(task.id, on_worker))
    return json_response(view(task))


@routes.post("/api/v1/worker/tasks/{task_id}/status")
async def change_status(request: web.Request) -> web.Response:
    who = principal(request, Role.WORKER)
    body = await read_body(request, StatusChange)
    task = await apply_status_change(
        request.app, request.match_info["task_id"], who.name, request[TOKEN], body
    )
    return json_response(view(task))


async def apply_status_change(
    app: web.Application, task_id: str, worker_id: str, token: str, change: StatusChange
) -> Task:
    """A worker's status change over HTTP or WebSocket; refusals raise ApiError."""

    async def write(session: AsyncSession) -> tuple[Task, Report, TaskAnnouncement | None]:
        task, report = await tasks.change_status(
            session, task_id, worker_id, change, app[SETTINGS].dispatch.max_rejections
        )
        note = None
        if TaskStatus(task.status) not in ON_WORKER:
            # It left the worker: the leader must free the slot and do the follow-up.
            note = announcements.record(session, task.id, worker_id, report.value)
        return task, report, note

    with refusals_as_http():
        # In a transaction shared with the other workers' changes and hand-outs (one commit).
        task, report, note = await app[WRITES].run(write, reads=[(Task.id, task_id)])
    # The dispatcher hears of it the same way as of an AMQP report, and does the follow-up.
    await announce(app, task.id, note, app[BUS].report(task, report, worker_id, token, change))
    return task


async def announce(
    app: web.Application,
    task_id: str,
    note: TaskAnnouncement | None,
    publishing: Awaitable[None],
) -> None:
    """Publish what the leader must hear of a committed change, then cross it off the outbox.

    The change stands either way. If the publish fails (or this process dies first) the note
    stays, and once its grace is over the leader does the follow-up itself; if only the
    crossing off fails, the follow-up is done twice, which a requeue or retry shrugs off.
    """
    try:
        await publishing
    except Exception:
        then = "the leader will follow it up" if note else "it needs no follow-up"
        log.exception("task %s changed but the change is not announced; %s", task_id, then)
        return
    if note is not None:
        app[OUTBOX].cross_off(note)


async def _get(session: AsyncSession, task_id: str, worker_id: str | None) -> Task:
    with refusals_as_http():
        return await tasks.get_task(session, task_id, worker_id)


@contextlib.contextmanager
def refusals_as_http() -> Iterator[None]:
    """The task service's refusals, answered as HTTP errors with their reason."""
    try:
        yield
    except tasks.NotFound as error:
        raise ApiError(404, str(error)) from None
    except tasks.NotYours as error:
        raise ApiError(403, str(error)) from None
    except LifecycleError as error:
        raise ApiError(409, str(error)) from None
    except StaleDataError:
        raise ApiError(409, RACED) from None
