"""The task lifecycle as one table: which report moves a task from which status to which.

queued → assigned → in_progress → done; a failure with attempts left waits in ``retrying``
(a RabbitMQ delay) and comes back; after the last attempt the task is ``dead``; a rejection
puts it back in the queue; ``cancelled`` can happen any time before it ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"


class Report(StrEnum):
    """What a worker says about its task; the routing key is ``task.<report>``."""

    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"


class FollowUp(StrEnum):
    """What must be published once the new status is committed."""

    REQUEUE = "requeue"  # back into intake, same priority
    RETRY = "retry"  # into the delay queue for this attempt, then back into intake
    DEAD_LETTER = "dead_letter"  # to workmesh.dead with the reason: attempts exhausted
    REJECTED_OUT = "rejected_out"  # to workmesh.dead: rejected as often as allowed


ON_WORKER = frozenset({TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS})
ASSIGNABLE = frozenset({TaskStatus.QUEUED, TaskStatus.RETRYING})
FINISHED = frozenset({TaskStatus.DONE, TaskStatus.DEAD, TaskStatus.CANCELLED})
CANCELLABLE = ASSIGNABLE | ON_WORKER

# The status a worker asks for over HTTP → the report it stands for.
REPORT_FOR_STATUS: dict[str, Report] = {
    "in_progress": Report.STARTED,
    "done": Report.DONE,
    "failed": Report.FAILED,
    "rejected": Report.REJECTED,
}


class LifecycleError(ValueError):
    """A report the lifecycle forbids; the message says why."""


@dataclass(frozen=True)
class Transition:
    status: TaskStatus
    attempt: int
    follow_up: FollowUp | None = None

    @property
    def leaves_worker(self) -> bool:
        return self.status not in ON_WORKER


def next_state(
    status: TaskStatus,
    report: Report,
    attempt: int,
    max_attempts: int,
    rejections: int = 0,
    max_rejections: int | None = None,
) -> Transition:
    """Where ``report`` takes a task that is in ``status``; raises LifecycleError if nowhere.

    ``rejections``: how many times the task was handed back before this report; the one that
    reaches ``max_rejections`` makes it dead instead of queued again.
    """
    if status not in ON_WORKER:
        raise LifecycleError(f"task is {status.value}; a worker cannot report {report.value}")
    if report is Report.STARTED:
        if status is TaskStatus.IN_PROGRESS:
            raise LifecycleError("task is already in_progress")
        return Transition(TaskStatus.IN_PROGRESS, attempt)
    if report is Report.DONE:
        return Transition(TaskStatus.DONE, attempt)
    if report is Report.REJECTED:
        if max_rejections is not None and rejections + 1 >= max_rejections:
            return Transition(TaskStatus.DEAD, attempt, FollowUp.REJECTED_OUT)
        return Transition(TaskStatus.QUEUED, attempt, FollowUp.REQUEUE)
    if attempt < max_attempts:
        return Transition(TaskStatus.RETRYING, attempt + 1, FollowUp.RETRY)
    return Transition(TaskStatus.DEAD, attempt, FollowUp.DEAD_LETTER)


def repeated_outcome(
    status: TaskStatus,
    report: Report,
    reported_by: str,
    worker_id: str | None,
    rejected_by: str | None,
) -> Transition | None:
    """If ``report`` was already applied (a redelivery, or a change the HTTP API made first),
    the state it led to; otherwise None. Its follow-up is published again: a duplicate
    message is harmless, a lost one is not."""
    same_worker = worker_id == reported_by
    if report is Report.STARTED and status is TaskStatus.IN_PROGRESS and same_worker:
        return Transition(status, 0)
    if report is Report.DONE and status is TaskStatus.DONE and same_worker:
        return Transition(status, 0)
    if report is Report.FAILED and same_worker:
        if status is TaskStatus.RETRYING:
            return Transition(status, 0, FollowUp.RETRY)
        if status is TaskStatus.DEAD:
            return Transition(status, 0, FollowUp.DEAD_LETTER)
    if report is Report.REJECTED and rejected_by == reported_by and worker_id is None:
        if status is TaskStatus.QUEUED:
            return Transition(status, 0, FollowUp.REQUEUE)
        if status is TaskStatus.DEAD:  # this rejection was the last one allowed
            return Transition(status, 0, FollowUp.REJECTED_OUT)
    return None
