"""``GET /api/v1/ops/overview``: what an operator watches, in one answer (docs/web.md)."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Task
from models.base import utcnow
from rabbitmq.topology import INTAKE_QUEUE
from workmesh.api.common import SESSIONS, STATUS_COUNTS, json_response, principal
from workmesh.channels.routes import CHANNELS
from workmesh.dispatch.lifecycle import TaskStatus
from workmesh.security import Role
from workmesh.services import workers
from workmesh.web.deadletters import DEAD_LETTERS

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

PRIORITIES = range(10)
WINDOWS = {"last_minute": 60, "last_5_minutes": 300}


@routes.get("/api/v1/ops/overview")
async def overview(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    async with request.app[SESSIONS]() as session:
        body: dict[str, Any] = {
            "generated_at": utcnow().isoformat(),
            "workers": [v.model_dump(mode="json") for v in await workers.worker_views(session)],
            "queue": {
                "queued_by_priority": await queued_by_priority(session),
                "intake_messages": await intake_messages(request.app),
            },
            "tasks": await request.app[STATUS_COUNTS].read(session),
            "throughput": await throughput(session),
        }
    body["dead_letters"] = request.app[DEAD_LETTERS].view()
    return json_response(body)


async def queued_by_priority(session: AsyncSession) -> dict[str, int]:
    """Stored tasks waiting for a worker (status ``queued``), per priority 9 down to 0."""
    counts = dict(
        (
            await session.execute(
                select(Task.priority, func.count())
                .where(Task.status == TaskStatus.QUEUED.value)
                .group_by(Task.priority)
            )
        ).all()
    )
    return {str(p): int(counts.get(p, 0)) for p in reversed(PRIORITIES)}


async def throughput(session: AsyncSession) -> dict[str, dict[str, int]]:
    """Tasks that ended ``done`` or ``dead`` within each window, by their ``finished_at``."""
    now = utcnow()
    out: dict[str, dict[str, int]] = {}
    ended = (TaskStatus.DONE, TaskStatus.DEAD)
    for name, seconds in WINDOWS.items():
        # One row, no GROUP BY, filtered on finished_at alone: the recent few are read off
        # ix_tasks_finished_at (grouped by status, SQLite walks every task by status).
        row = (
            await session.execute(
                select(
                    *(func.count().filter(Task.status == status.value) for status in ended)
                ).where(Task.finished_at >= now - timedelta(seconds=seconds))
            )
        ).one()
        out[name] = {status: int(count) for status, count in zip(ended, row, strict=True)}
    return out


async def intake_messages(app: web.Application) -> int | None:
    """Messages in the intake queue (all priorities: RabbitMQ counts a queue, not a level).

    None when RabbitMQ cannot be asked; the rest of the overview still answers.
    """
    try:
        channel = await app[CHANNELS].connection.channel()
    except Exception:
        log.warning("intake depth unavailable", exc_info=True)
        return None
    try:
        queue = await channel.declare_queue(INTAKE_QUEUE, passive=True)
        return int(queue.declaration_result.message_count or 0)
    except Exception:
        log.warning("intake depth unavailable", exc_info=True)
        return None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
