"""Durable SQLite commits that do not stop the event loop.

With ``synchronous=FULL`` SQLite syncs its write-ahead log inside every commit. The leader's
turns commit on the event loop (workmesh/engine/store.py), and there that sync stopped the
loop for ~0.65 ms a turn: 13% to 16% of the leader's time at a steady 200 tasks/s (py-spy), with
every delivery, confirm and report waiting behind it. In WAL mode FULL is NORMAL plus one sync
of the log after each commit (SQLite's documentation of ``PRAGMA synchronous``), so the leader's
connection commits with NORMAL and this class does that sync: in a thread of its own, and once
for all the turns that committed while the previous sync ran (a group commit). A turn publishes
its assignments and acknowledges its messages only after ``durable()``, as it did after a FULL
commit: what RabbitMQ forgets, the database has on disk.
"""

from __future__ import annotations

import asyncio
import os
import threading

# Linux's fdatasync skips metadata a read does not need, as SQLite's own sync does; macOS has
# only fsync.
_sync_file = getattr(os, "fdatasync", os.fsync)


class LogSync:
    """Syncs one SQLite database's write-ahead log on demand, in a thread of its own.

    The thread and the loop hand over with a semaphore one way and ``call_soon_threadsafe`` the
    other: an executor's futures around each sync cost ~0.07 ms more of CPU per commit.
    """

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self._commits = 0  # commits made on the loop
        self._covered = 0  # of those, the ones a finished sync has made durable
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._failure: OSError | None = None
        self._file: int | None = None  # a descriptor of the log, used by the thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._asked = threading.Semaphore(0)  # one release per sync the thread is to make
        self._syncing = False  # the thread has been asked and has not answered yet
        self._closing = False

    def committed(self) -> None:
        """Count a commit made with ``synchronous=NORMAL``: written, not yet synced."""
        self._commits += 1

    async def durable(self) -> None:
        """Return once every commit counted so far is on disk.

        A sync already under way may have begun before the last commit, so it cannot vouch
        for it; the caller then waits for the next one, which serves everyone who asked
        meanwhile.
        """
        if self._failure is not None:
            raise self._failure
        if self._covered >= self._commits:
            return
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(
                target=self._serve, name="workmesh-log-sync", daemon=True
            )
            self._thread.start()
        waiting: asyncio.Future[None] = loop.create_future()
        self._waiting.append((self._commits, waiting))
        self._ask()
        await waiting

    def _ask(self) -> None:
        if not self._syncing:
            self._syncing = True
            self._asked.release()

    def _serve(self) -> None:
        """The thread: one sync per request, each answered on the loop."""
        assert self._loop is not None
        while True:
            self._asked.acquire()
            if self._closing:
                return
            covering = self._commits  # every commit counted before the sync begins
            try:
                self._sync()
            except OSError as error:
                self._loop.call_soon_threadsafe(self._failed, error)
            else:
                self._loop.call_soon_threadsafe(self._synced, covering)

    def _synced(self, covering: int) -> None:
        self._syncing = False
        self._covered = covering
        still = []
        for wanted, waiting in self._waiting:
            if wanted > covering:
                still.append((wanted, waiting))
            elif not waiting.done():
                waiting.set_result(None)
        self._waiting = still
        if still:
            self._ask()

    def _failed(self, error: OSError) -> None:
        """What the failed sync should have written may be lost, and a later sync cannot tell
        (the kernel reports such an error once). Every turn waiting fails, and so does every
        later one: the leader's term ends, and the next term reads the database afresh with a
        new connection."""
        self._syncing = False
        self._failure = error
        for _, waiting in self._waiting:
            if not waiting.done():
                waiting.set_exception(error)
        self._waiting = []

    def _sync(self) -> None:
        """In the thread: sync the log, through a descriptor of the file now at its path."""
        if self._file is not None and os.fstat(self._file).st_ino != os.stat(self.log_path).st_ino:
            # SQLite deleted the log and made a new one (it does so when the last connection
            # to the database closes): the old descriptor syncs a file nobody reads.
            os.close(self._file)
            self._file = None
        if self._file is None:
            self._file = os.open(self.log_path, os.O_RDONLY)
        _sync_file(self._file)

    async def close(self) -> None:
        """Stop the thread once it has made the sync it was asked for, if any."""
        if self._thread is not None:
            self._closing = True
            self._asked.release()
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for _, waiting in self._waiting:
            waiting.cancel()
        self._waiting = []
        if self._file is not None:
            os.close(self._file)
            self._file = None
