"""The task lifecycle table: every status against every report."""

from __future__ import annotations

import pytest

from workmesh.dispatch.lifecycle import (
    ON_WORKER,
    FollowUp,
    LifecycleError,
    Report,
    TaskStatus,
    next_state,
    repeated_outcome,
)

EXPECTED = {
    (TaskStatus.ASSIGNED, Report.STARTED): (TaskStatus.IN_PROGRESS, None),
    (TaskStatus.ASSIGNED, Report.DONE): (TaskStatus.DONE, None),
    (TaskStatus.IN_PROGRESS, Report.DONE): (TaskStatus.DONE, None),
    (TaskStatus.ASSIGNED, Report.REJECTED): (TaskStatus.QUEUED, FollowUp.REQUEUE),
    (TaskStatus.IN_PROGRESS, Report.REJECTED): (TaskStatus.QUEUED, FollowUp.REQUEUE),
}


@pytest.mark.parametrize("status", list(TaskStatus))
@pytest.mark.parametrize("report", list(Report))
def test_every_status_and_report(status: TaskStatus, report: Report) -> None:
    if status not in ON_WORKER or (status, report) == (TaskStatus.IN_PROGRESS, Report.STARTED):
        with pytest.raises(LifecycleError):
            next_state(status, report, attempt=1, max_attempts=3)
        return
    transition = next_state(status, report, attempt=1, max_attempts=3)
    if report is Report.FAILED:
        assert (transition.status, transition.attempt, transition.follow_up) == (
            TaskStatus.RETRYING,
            2,
            FollowUp.RETRY,
        )
    else:
        assert (transition.status, transition.follow_up) == EXPECTED[(status, report)]


def test_the_last_failure_is_dead() -> None:
    transition = next_state(TaskStatus.IN_PROGRESS, Report.FAILED, attempt=3, max_attempts=3)
    assert transition.status is TaskStatus.DEAD
    assert transition.follow_up is FollowUp.DEAD_LETTER
    assert transition.leaves_worker


def test_the_last_rejection_allowed_is_dead() -> None:
    # Below the limit a rejection puts the task back; the one that reaches it ends the task
    back = next_state(TaskStatus.ASSIGNED, Report.REJECTED, 1, 3, rejections=8, max_rejections=10)
    assert (back.status, back.follow_up) == (TaskStatus.QUEUED, FollowUp.REQUEUE)
    out = next_state(TaskStatus.ASSIGNED, Report.REJECTED, 2, 3, rejections=9, max_rejections=10)
    assert (out.status, out.attempt, out.follow_up) == (
        TaskStatus.DEAD,
        2,
        FollowUp.REJECTED_OUT,
    )
    assert out.leaves_worker


def test_a_death_by_failure_is_no_repeated_rejection() -> None:
    # Dead after failing on w (which stays its worker), a late rejection from w is refused
    assert repeated_outcome(TaskStatus.DEAD, Report.REJECTED, "w", "w", "w") is None


def test_a_forbidden_report_says_why() -> None:
    with pytest.raises(LifecycleError, match="task is done; a worker cannot report started"):
        next_state(TaskStatus.DONE, Report.STARTED, 1, 3)


@pytest.mark.parametrize(
    ("status", "report", "worker", "rejected_by", "follow_up"),
    [
        (TaskStatus.IN_PROGRESS, Report.STARTED, "w", None, None),
        (TaskStatus.DONE, Report.DONE, "w", None, None),
        (TaskStatus.RETRYING, Report.FAILED, "w", None, FollowUp.RETRY),
        (TaskStatus.DEAD, Report.FAILED, "w", None, FollowUp.DEAD_LETTER),
        (TaskStatus.QUEUED, Report.REJECTED, None, "w", FollowUp.REQUEUE),
        (TaskStatus.DEAD, Report.REJECTED, None, "w", FollowUp.REJECTED_OUT),
    ],
)
def test_a_repeated_report_repeats_its_follow_up(
    status: TaskStatus,
    report: Report,
    worker: str | None,
    rejected_by: str | None,
    follow_up: FollowUp | None,
) -> None:
    outcome = repeated_outcome(status, report, "w", worker, rejected_by)
    assert outcome is not None
    assert outcome.follow_up is follow_up
    # From another worker it is not a repeat.
    assert repeated_outcome(status, report, "other", worker, rejected_by) is None
