"""Write transactions of many callers, committed together.

In the api role every task taken over HTTP or a WebSocket was written in transactions of its
own: its lease when it was handed out, its status when the worker reported it. Each commit
syncs the disk, and on SQLite each also waits for the one writer's lock, its busy handler
sleeping between tries; so on SQLite the WebSocket channel took 100 - 150 tasks/s and the long
poll 75 - 100 with the api's event loop mostly idle (docs/channels.md). Here a caller's work
joins the transaction that begins next: while groups are being written (two at a time,
``WRITERS``), the work that arrives meanwhile gathers and goes in the next one, with one commit
for all of it. Work that arrives when a writer is free begins at once, on the loop's next turn.

If any work of a group raises (a refusal such as a status change the lifecycle forbids, or a
change made meanwhile by someone else, found at the commit), the group's transaction is rolled
back and each of its works runs again alone, in a transaction of its own, as it did before
this class: every caller gets exactly what it would have got alone. Refusals are rare, and
so is that fallback.

A work may therefore run more than once; it must do nothing but read and write through the
session it is given. Its caller acts on the result (acknowledges, publishes, answers) only
after the commit. In a group, reads come first and the writes go together at the commit (the
session does not flush before each read): on SQLite the group then holds the one writer's
lock, which the dispatcher's turns need too, only for its writes. A work sees the changes of
the works before it through ``session.get`` (the session's own objects), not through queries
or ``group_read``, which tell what the database held when the group read it: two works that
add the same unique value both find none, and the group's commit fails, whereupon each runs
alone and the second finds the first's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

Result = TypeVar("Result")
Work = Callable[[AsyncSession], Awaitable[Result]]
# A unique column of a mapped class (``Task.id``, ``Task.idempotency_key``) and a value: the
# row whose column holds it.
Read = tuple[Any, Any]
# Where a session serving a group keeps what the group read (``info`` is the session's own).
_READ = "workmesh.group_commit.read"


@dataclass
class Waiting:
    work: Work[Any]
    done: asyncio.Future[Any]
    reads: Sequence[Read]


GROUP_LIMIT = 100  # works in one transaction at most: a commit soon, a rollback cheap
# Groups written at once. With one, a lone hand-out waits behind a whole group's commit; with
# two, one group gathers and reads while the other commits. In the runs either side of the
# change (SQLite, bench/channels.py --only websocket): p99 at 100/s 14 and 16 ms with one
# writer, 8.0 and 8.4 with two; bursts 238 - 267 and 256 - 261 tasks/s. Few runs, but no sign
# that the second costs anything.
WRITERS = 2


class GroupCommit:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        limit: int = GROUP_LIMIT,
        writers: int = WRITERS,
    ) -> None:
        self.sessions = sessions
        self.limit = limit
        self.writers = writers
        self.commits = 0  # transactions committed (groups, and works run alone)
        self._waiting: list[Waiting] = []
        self._writing: set[asyncio.Task[None]] = set()

    async def run(self, work: Work[Result], reads: Sequence[Read] = ()) -> Result:
        """Run ``work`` in a transaction, most likely shared; return its result once committed.

        ``reads``: the rows the work looks up, each by a unique column; the group loads all of
        its works' rows in one query per column first, so that each work finds its rows in the
        session: by primary key with ``session.get``, by another column with ``group_read``.

        What ``work`` raises (alone, in the fallback) is raised here; so is a failed commit.
        A caller cancelled meanwhile does not stop its work: it may still be committed.
        """
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append(Waiting(work, done, reads))
        if len(self._writing) < self.writers:
            # A task, not a call: the works of callers started in the same turn of the loop
            # (asyncio.gather) are all waiting by the time it runs, and go in one group.
            writer = asyncio.create_task(self._write())
            self._writing.add(writer)
            writer.add_done_callback(self._writing.discard)  # (if cancelled before it began)
        return await done

    async def close(self) -> None:
        """Let the groups being written finish, and the ones waiting after them."""
        for writer in list(self._writing):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(writer)

    async def _write(self) -> None:
        group: list[Waiting] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self.limit], self._waiting[self.limit :]
                await self._commit([waiting for waiting in group if not waiting.done.done()])
        except BaseException:
            # Cancelled (the process is stopping) or worse: no caller may wait forever.
            for waiting in group + self._waiting:
                if not waiting.done.done():
                    waiting.done.cancel()
            self._waiting = []
            raise
        finally:
            # Off the list in the same step that found nothing more to write: a caller answered
            # by this writer runs before the task's done callbacks, and its next work must
            # start a writer of its own rather than wait for this one.
            self._writing.discard(asyncio.current_task())

    async def _commit(self, group: list[Waiting]) -> None:
        if len(group) > 1:
            try:
                async with self.sessions() as session, session.begin():
                    # (Held here: the session keeps only weak references to what it loaded.)
                    _loaded = await _load(session, [read for w in group for read in w.reads])
                    # Reads first, writes together at the commit: on SQLite the group holds
                    # the writer's lock (which the dispatcher's turns need) only for those.
                    with session.no_autoflush:
                        results = [await waiting.work(session) for waiting in group]
            except Exception:
                pass  # each runs again alone, below, and gets its own answer
            else:
                self.commits += 1
                for waiting, result in zip(group, results, strict=True):
                    _settle(waiting.done, result)
                return
        for waiting in group:
            try:
                async with self.sessions() as session, session.begin():
                    result = await waiting.work(session)
            except Exception as error:
                if not waiting.done.done():
                    waiting.done.set_exception(error)
            else:
                self.commits += 1
                _settle(waiting.done, result)


async def _load(session: AsyncSession, reads: list[Read]) -> list[Any]:
    """Put the rows in the session, one query per column, and note what was found and what
    was not (``group_read``)."""
    wanted: defaultdict[tuple[type[Any], str], set[Any]] = defaultdict(set)
    for column, value in reads:
        wanted[column.class_, column.key].add(value)
    loaded: list[Any] = []
    found: dict[tuple[type[Any], str, Any], Any] = {}
    for (model, name), values in wanted.items():
        rows = (await session.scalars(select(model).where(getattr(model, name).in_(values)))).all()
        loaded += rows
        found.update({(model, name, value): None for value in values})
        found.update({(model, name, getattr(row, name)): row for row in rows})
    session.info[_READ] = found
    return loaded


def group_read(session: AsyncSession, column: Any, value: Any) -> tuple[bool, Any]:
    """Whether the group this session serves read the row whose ``column`` holds ``value``
    (a work's ``reads``), and that row as it was then: None if there was none. (False, None)
    for a session that serves a work alone: the work then looks it up itself."""
    found = session.info.get(_READ)
    if found is None or (column.class_, column.key, value) not in found:
        return False, None
    return True, found[column.class_, column.key, value]


def _settle(done: asyncio.Future[Any], result: Any) -> None:
    if not done.done():  # (its caller was cancelled meanwhile)
        done.set_result(result)
