"""The group commit that makes the leader's SQLite commits durable off the event loop
(workmesh/engine/log_sync.py): a sync vouches only for commits made before it began, one sync
serves everyone who asked meanwhile, and a failed sync fails every turn from then on."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workmesh.engine import log_sync
from workmesh.engine.log_sync import LogSync


class Disk:
    """Stands in for fdatasync: records the file each sync reached, and can hold syncs back
    until the test lets one through."""

    def __init__(self) -> None:
        self.synced: list[int] = []  # inode of each synced file
        self.started = threading.Semaphore(0)
        self.gate: threading.Semaphore | None = None
        self.failure: OSError | None = None

    def sync(self, file: int) -> None:
        self.started.release()
        if self.gate is not None:
            self.gate.acquire(timeout=10)
        if self.failure is not None:
            raise self.failure
        self.synced.append(os.fstat(file).st_ino)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 10), "no sync began"


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    made = Disk()
    monkeypatch.setattr(log_sync, "_sync_file", made.sync)
    yield made
    if made.gate is not None:
        made.gate.release(100)  # nothing left hanging in the sync thread


def inode(path: Path) -> int:
    return path.stat().st_ino


def make_anew(path: Path) -> None:
    """As SQLite does with its log when the last connection closes and a new one writes (the
    old file lives on, open in the sync, so its inode number is not reused)."""
    path.unlink()
    path.write_bytes(b"new frames")


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "db-wal"
    path.write_bytes(b"frames")
    return path


async def test_a_sync_vouches_only_for_commits_made_before_it_began(
    disk: Disk, log_file: Path
) -> None:
    sync = LogSync(str(log_file))
    disk.gate = threading.Semaphore(0)
    try:
        sync.committed()
        first = asyncio.create_task(sync.durable())
        await disk.wait_started()
        # Given commits made while that sync runs
        sync.committed()
        second = asyncio.create_task(sync.durable())
        sync.committed()
        third = asyncio.create_task(sync.durable())
        await asyncio.sleep(0.05)

        # When the running sync ends, only the commit made before it is durable
        disk.gate.release()
        await asyncio.wait_for(first, 5)
        await asyncio.sleep(0.05)
        assert not second.done()
        assert not third.done()

        # and one more sync serves both later commits
        disk.gate.release()
        await asyncio.wait_for(asyncio.gather(second, third), 5)
        assert len(disk.synced) == 2
    finally:
        await sync.close()


async def test_with_nothing_new_committed_no_sync_is_made(disk: Disk, log_file: Path) -> None:
    sync = LogSync(str(log_file))
    try:
        await sync.durable()  # nothing committed yet
        sync.committed()
        await sync.durable()
        await sync.durable()  # covered by the sync before
        assert disk.synced == [inode(log_file)]
    finally:
        await sync.close()


async def test_the_sync_runs_off_the_event_loop(disk: Disk, log_file: Path) -> None:
    sync = LogSync(str(log_file))
    disk.gate = threading.Semaphore(0)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(tick())
    try:
        sync.committed()
        durable = asyncio.create_task(sync.durable())
        await disk.wait_started()
        before = ticks
        await asyncio.sleep(0.1)
        assert ticks - before >= 10  # the loop ran while the disk held the sync
        disk.gate.release()
        await asyncio.wait_for(durable, 5)
    finally:
        ticking.cancel()
        await sync.close()


async def test_a_failed_sync_fails_every_turn_from_then_on(disk: Disk, log_file: Path) -> None:
    sync = LogSync(str(log_file))
    try:
        disk.failure = OSError(5, "Input/output error")
        sync.committed()
        with pytest.raises(OSError, match="Input/output"):
            await sync.durable()
        # The kernel reports a failed write-back once; a later sync that succeeds proves
        # nothing about the commits before it.
        disk.failure = None
        sync.committed()
        with pytest.raises(OSError, match="Input/output"):
            await sync.durable()
        assert disk.synced == []
    finally:
        await sync.close()


async def test_a_log_made_anew_is_the_one_synced(disk: Disk, log_file: Path) -> None:
    sync = LogSync(str(log_file))
    try:
        sync.committed()
        await sync.durable()
        make_anew(log_file)
        sync.committed()
        await sync.durable()
        assert disk.synced[-1] == inode(log_file)
        assert disk.synced[-1] != disk.synced[0]
    finally:
        await sync.close()


async def test_a_missing_log_is_a_failed_sync(log_file: Path) -> None:
    sync = LogSync(str(log_file) + "-gone")
    try:
        sync.committed()
        with pytest.raises(FileNotFoundError):
            await sync.durable()
    finally:
        await sync.close()
