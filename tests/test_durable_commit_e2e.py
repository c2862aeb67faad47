"""A turn sends its assignments only once its commit is on disk.

On SQLite the leader's commits do not sync the log themselves (``synchronous=NORMAL`` on its
connection); a thread syncs it for them, once for a group of turns
(workmesh/engine/log_sync.py). An assignment sent before that sync would, after a power loss,
be in a worker's hands while the database no longer knew the task, and the intake message
(not yet acknowledged) would make it a second time. Here the disk holds the sync back, or
fails it. SQLite only: PostgreSQL has synced its log when it answers COMMIT.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bots import Producer
from tests.conftest import Harness, eventually
from workmesh.db import migrate
from workmesh.engine import log_sync


@pytest.fixture
async def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'workmesh.db'}"
    await asyncio.to_thread(migrate, url)
    return url


class Disk:
    """The leader's log syncs, held back until ``release`` or failed while ``failing``."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.failing = False
        self.syncs = 0
        self._real = log_sync._sync_file

    def sync(self, file: int) -> None:
        self.released.wait(10)
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        self.syncs += 1
        self._real(file)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    made = Disk()
    monkeypatch.setattr(log_sync, "_sync_file", made.sync)
    yield made
    made.released.set()  # nothing left waiting in a sync thread


async def test_an_assignment_waits_for_its_commit_to_reach_the_disk(
    harness: Harness, disk: Disk
) -> None:
    await harness.start()
    bot = await harness.bot("w", capacity=2)
    await harness.wait_online("w")
    token = await harness.producer_token()

    # Given a disk that has not yet synced the leader's log
    async with Producer(harness.amqp_url, token) as producer:
        task_id = await producer.submit()
    # When the turn has committed the assignment
    await harness.wait_task(task_id, "the assignment committed", status="assigned", worker_id="w")
    # Then it is not sent while the commit is not on disk
    await asyncio.sleep(0.3)
    assert bot.received == []

    # and once the sync is done, it is sent, and the task goes on as usual
    disk.released.set()
    await eventually(lambda: len(bot.received) == 1, message="assignment sent after the sync")
    await harness.wait_task(task_id, "the task done", status="done")
    assert disk.syncs >= 1


async def test_a_failed_sync_ends_the_term_and_the_next_sends_the_task_once(
    harness: Harness, disk: Disk
) -> None:
    dispatcher = (await harness.start()).dispatcher
    assert dispatcher is not None
    bot = await harness.bot("w", capacity=2)
    await harness.wait_online("w")
    token = await harness.producer_token()

    # Given a disk whose next sync fails
    disk.failing = True
    disk.released.set()
    async with Producer(harness.amqp_url, token) as producer:
        task_id = await producer.submit()
    # When the turn's commit cannot be made durable, the leader gives up its term
    await eventually(lambda: not dispatcher.leading.is_set(), message="the term ended")
    assert bot.received == []

    # Then the next term (its own connection, the disk well again) sends the task once:
    # RabbitMQ gave the intake message back, and the row says it is assigned already
    disk.failing = False
    await harness.wait_task(task_id, "the task done in the next term", status="done")
    assert [r.task_id for r in bot.received] == [task_id]
