"""Task changes the HTTP API commits but cannot announce are followed up by the leader.

The API publishes a worker's report (or a cancel notice) after its commit; if RabbitMQ refuses
that publish, or the API dies in between, the note it wrote in the same transaction
(``task_announcements``) outlives its grace and the leader does the follow-up itself. A
submission whose publish failed (HTTP 202) gets a note too, and the leader publishes it.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import Task, TaskAnnouncement
from models.base import utcnow
from tests.bots import EventTap, Producer, read_dead_letters
from tests.conftest import Harness, eventually
from workmesh.api.bus import ApiBus
from workmesh.engine import healing, review


async def broker_away(*args: object, **kwargs: object) -> None:
    raise ConnectionError("RabbitMQ is away")


@pytest.fixture(autouse=True)
def short_graces(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seconds in production; short here, but well above the 0.2 s the API takes to cross off.
    monkeypatch.setattr(healing, "GRACE", timedelta(seconds=1))
    monkeypatch.setattr(review, "REPORT_GRACE", timedelta(seconds=0.2))


async def notes_left(harness: Harness) -> int:
    async with harness.meshes[0].sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(TaskAnnouncement)) or 0)


async def no_notes(harness: Harness) -> bool:
    return await notes_left(harness) == 0


async def unannounced_metric(harness: Harness) -> str:
    async with harness.http.get(f"{harness.base}/metrics") as response:
        text = await response.text()
    return "\n".join(
        line for line in text.splitlines() if line.startswith("workmesh_unannounced_changes_total")
    )


async def test_reports_the_api_could_not_publish_still_retry_requeue_and_dead_letter(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker over HTTP, two attempts per task, and an orphan sweep too slow to help
    await harness.start(
        max_attempts=2,
        retry_delays=[0.2],
        reconcile_interval=0.3,
        heartbeat_timeout=60.0,
        orphan_after=300.0,
    )
    token = await harness.add_worker("hw", capacity=1)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("hw")
    _, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "k", "priority": 3})
    path = f"/api/v1/worker/tasks/{task['id']}/status"
    await harness.wait_task(task["id"], "assigned", status="assigned")
    # When RabbitMQ refuses every report the API publishes
    monkeypatch.setattr(ApiBus, "report", broker_away)
    async with EventTap(harness.amqp_url, ("task.dead",)) as tap:
        # A failure with an attempt left still comes back after its backoff...
        status, body = await harness.api(
            "POST", path, token=token, json={"status": "failed", "error": "disk full"}
        )
        assert (status, body["status"]) == (200, "retrying")
        await harness.wait_task(task["id"], "retried", status="assigned", attempt=2)
        # ...a rejection puts it back in the queue (and, with no one else, back to hw)...
        status, body = await harness.api("POST", path, token=token, json={"status": "rejected"})
        assert (status, body["status"]) == (200, "queued")
        await harness.wait_task(task["id"], "requeued", status="assigned", rejections=1)
        # ...and the last failure is dead-lettered with its reason and announced as task.dead
        status, body = await harness.api(
            "POST", path, token=token, json={"status": "failed", "error": "disk still full"}
        )
        assert (status, body["status"]) == (200, "dead")
        dead = await read_dead_letters(harness.amqp_url, expect=1)
        await eventually(lambda: len(tap.of("task.dead")) == 1, message="task.dead")
    headers, dead_body = dead[0]
    assert headers["x-workmesh-reason"] == "attempts exhausted (2 of 2): disk still full"
    assert json.loads(dead_body)["id"] == task["id"]
    assert tap.of("task.dead") == [{"task_id": task["id"], "error": "disk still full"}]
    # The notes are gone once followed up, and an operator can see that it happened
    await eventually(lambda: no_notes(harness), message="the notes crossed off")
    metric = await unannounced_metric(harness)
    assert 'workmesh_unannounced_changes_total{event="failed"} 2.0' in metric
    assert 'workmesh_unannounced_changes_total{event="rejected"} 1.0' in metric


async def test_a_cancel_the_api_could_not_announce_still_reaches_the_worker(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.start(reconcile_interval=0.3)
    bot = await harness.bot("holder", capacity=1, mode="hold")
    await harness.wait_online("holder")
    _, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "long"})
    await eventually(lambda: bot.task_ids() == [task["id"]], message="holder has it")
    monkeypatch.setattr(ApiBus, "cancelled", broker_away)
    async with EventTap(harness.amqp_url, ("task.cancelled",)) as tap:
        status, body = await harness.api("POST", f"/api/v1/tasks/{task['id']}/cancel")
        assert (status, body["status"]) == (200, "cancelled")
        # The worker is told after all, and the event follows the notice
        await eventually(lambda: bot.cancels == [task["id"]], message="cancel notice")
        await eventually(lambda: len(tap.of("task.cancelled")) == 1, message="task.cancelled")
    assert tap.of("task.cancelled") == [{"task_id": task["id"], "worker_id": "holder"}]
    # And its slot is free: the next task goes to the same worker
    _, nxt = await harness.api("POST", "/api/v1/tasks", json={"kind": "next"})
    await eventually(lambda: bot.task_ids() == [task["id"], nxt["id"]], message="next task")
    assert await notes_left(harness) == 0


async def test_announced_changes_leave_no_note_and_no_second_follow_up(harness: Harness) -> None:
    await harness.start(max_attempts=1, reconcile_interval=0.3, heartbeat_timeout=60.0)
    token = await harness.add_worker("hw", capacity=1)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("hw")
    _, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    await harness.wait_task(task["id"], "assigned", status="assigned")
    status, _ = await harness.api(
        "POST",
        f"/api/v1/worker/tasks/{task['id']}/status",
        token=token,
        json={"status": "failed", "error": "no"},
    )
    assert status == 200
    # One dead letter (from the report the API published), and no note left behind to
    # make the leader send a second one after the grace
    assert len(await read_dead_letters(harness.amqp_url, expect=1)) == 1
    await eventually(lambda: no_notes(harness), message="crossed off (within 0.2 s)", timeout=1)
    assert await read_dead_letters(harness.amqp_url, expect=1, timeout=1.5) == []
    assert await unannounced_metric(harness) == ""


async def test_a_note_whose_task_moved_on_or_is_gone_is_dropped(harness: Harness) -> None:
    mesh = await harness.start(reconcile_interval=0.3)
    bot = await harness.bot("b", capacity=1, mode="hold")
    await harness.wait_online("b")
    _, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    await eventually(lambda: bot.task_ids() == [task["id"]], message="assigned")
    # Notes from before: a failure of this task by a worker it has left since, a rejection
    # of a task the retention has deleted
    long_ago = utcnow() - timedelta(minutes=5)
    async with mesh.sessions() as session, session.begin():
        session.add_all(
            [
                TaskAnnouncement(
                    task_id=task["id"], worker_id="gone", event="failed", created_at=long_ago
                ),
                TaskAnnouncement(
                    task_id="0" * 36, worker_id="b", event="rejected", created_at=long_ago
                ),
                # and one no release of the API writes, which must not stop the leader
                TaskAnnouncement(
                    task_id=task["id"], worker_id="b", event="paused", created_at=long_ago
                ),
            ]
        )
    await eventually(lambda: no_notes(harness), message="the notes dropped")
    # Nothing was published for them: the task stays with b, nothing dead, nothing requeued
    assert await read_dead_letters(harness.amqp_url, expect=1, timeout=0.5) == []
    async with mesh.sessions() as session:
        row = await session.get(Task, task["id"])
        assert row is not None
        assert (row.status, row.worker_id, row.attempt) == ("in_progress", "b", 1)
    assert bot.task_ids() == [task["id"]]
    # And the leader is still at work
    await bot.finish_all()
    _, nxt = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    await eventually(lambda: bot.task_ids() == [task["id"], nxt["id"]], message="next task")


async def test_a_task_the_api_could_not_publish_is_published_by_the_leader_behind_a_backlog(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one busy worker and two tasks waiting in the intake queue (so the orphan sweep,
    # which waits for empty queues, would not run)
    await harness.start(reconcile_interval=0.3, orphan_after=300.0)
    bot = await harness.bot("b", capacity=1, mode="hold")
    await harness.wait_online("b")
    async with Producer(harness.amqp_url, await harness.producer_token()) as producer:
        waiting = [await producer.submit(priority=1) for _ in range(3)]
    await eventually(lambda: bot.task_ids() == waiting[:1], message="one taken, two waiting")
    # When the API stores an urgent task but RabbitMQ refuses its publish
    monkeypatch.setattr(ApiBus, "submit", broker_away)
    status, urgent = await harness.api("POST", "/api/v1/tasks", json={"kind": "u", "priority": 9})
    assert (status, urgent["status"]) == (202, "queued")
    await eventually(lambda: no_notes(harness), message="the leader published it")
    # Then it is in the queue by its priority: the next free slot takes it first
    await bot.finish_all()
    await eventually(lambda: len(bot.task_ids()) == 2, message="the next task")
    assert bot.task_ids()[1] == urgent["id"]
    await bot.finish_all()
    await eventually(lambda: len(bot.task_ids()) == 3, message="the one after")
    assert bot.task_ids()[2] == waiting[1]
