"""The follow-ups of task changes the HTTP API committed but never announced, and the
publishes of tasks it stored but could not publish.

The API notes in its outbox (workmesh/services/announcements.py) every change that takes a
task off its worker, and crosses the note off once RabbitMQ has confirmed the report or cancel
notice it publishes after the commit; it notes a submission only when its publish failed. A
note still there after ``GRACE`` was never announced: a publish that failed, or a process that
died in between. The leader then does what the message
would have made it do, from the task as the database has it now: the retry, requeue or dead
letter a report leads to, a cancel notice to the worker, a submission's message to the intake
queue. The worker's slot is freed by the reconciliation (workmesh/engine/review.py), which
reads the same database.

A note crossed off too late (the publish went through after the grace, or crossing off failed)
has its follow-up done twice: a duplicate requeue or retry is dropped by the intake, a
duplicate dead letter is the at-least-once the contract states.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from models import Task, TaskAnnouncement
from models.base import utcnow
from workmesh.dispatch.lifecycle import Report, TaskStatus, repeated_outcome
from workmesh.engine.publisher import gather_confirms
from workmesh.engine.reports import publish_follow_up
from workmesh.engine.state import LeaderState
from workmesh.services import announcements, assignments

log = logging.getLogger(__name__)

# How long the API has to publish after its commit before the leader takes over.
GRACE = timedelta(seconds=5)
# Notes handled per review: a backlog (RabbitMQ was down while people worked) drains over a
# few reviews rather than in one long burst of publishes.
BATCH = 200


async def follow_up_unannounced(state: LeaderState) -> int:
    """Do the follow-ups of the notes past their grace, then delete them; returns how many."""
    async with state.sessions() as session:
        overdue = await announcements.overdue(session, utcnow() - GRACE, BATCH)
    if not overdue:
        return 0
    sending: list[Awaitable[Any]] = []
    for note, task in overdue:
        sending += _follow_ups(state, note, task)
        state.metrics.unannounced.labels(event=note.event).inc()
    await gather_confirms(sending)
    async with state.sessions() as session, session.begin():
        await announcements.forget(session, [note.id for note, _ in overdue])
    log.warning("followed up %d task changes the API had not announced", len(overdue))
    return len(overdue)


def _follow_ups(
    state: LeaderState, note: TaskAnnouncement, task: Task | None
) -> list[Awaitable[Any]]:
    if task is None:  # deleted by the retention since: nothing left to do
        return []
    status = TaskStatus(task.status)
    if note.event == announcements.SUBMITTED:
        if status is not TaskStatus.QUEUED:  # taken already: its message got through after all
            return []
        return [state.publisher.intake(assignments.intake_body(task), task.priority)]
    if note.worker_id is None or note.event not in (*Report, announcements.CANCELLED):
        log.error(
            "dropped an outbox note of %r for task %s: no such event", note.event, note.task_id
        )
        return []
    if note.event == announcements.CANCELLED:
        if status is not TaskStatus.CANCELLED:
            return []
        return [_tell_cancelled(state, note.worker_id, task.id)]
    # Only if the task is still where the report led: one that has moved on since (retried
    # and assigned again, say) needs nothing more.
    outcome = repeated_outcome(
        status, Report(note.event), note.worker_id, task.worker_id, task.rejected_by
    )
    if outcome is None or outcome.follow_up is None:
        return []
    return [publish_follow_up(state, task, outcome.follow_up)]


async def _tell_cancelled(state: LeaderState, worker_id: str, task_id: str) -> None:
    """The API's two messages for a cancel, in its order: the notice, then the event."""
    await state.publisher.cancel_notice(worker_id, task_id)
    await state.publisher.event("task.cancelled", {"task_id": task_id, "worker_id": worker_id})
