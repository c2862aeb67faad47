"""AMQP heartbeats that arrive together are checked and recorded in one transaction.

Every worker heartbeats once a second. One transaction each means as many write transactions
a second as there are workers, and on SQLite each holds the database's one write lock while
aiosqlite's thread and the event loop hand the statements back and forth: the dispatcher
leader's turns, which must write too, waited behind a fleet's heartbeats (seen as a burst of
late assignments every second in bench/dispatch.py). A ``HeartbeatBook`` collects the
heartbeats that arrive within ``linger`` of the first and writes them with one read and one
update; each sender learns its own outcome (recorded, unknown worker, wrong token) before its
message is acknowledged, as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Worker
from models.base import utcnow
from models.workers import LIVE
from workmesh.security import header_holds
from workmesh.services.workers import UnknownWorker

# How long the first heartbeat of a batch waits for others. Heartbeats are judged against a
# timeout of seconds; a worker's queue of them is acknowledged this much later.
LINGER = 0.05


@dataclass
class _Beat:
    worker_id: str
    token: object
    outcome: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class HeartbeatBook:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], linger: float = LINGER):
        self.sessions = sessions
        self.linger = linger
        self._pending: list[_Beat] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, worker_id: str, token: object) -> None:
        """Record a heartbeat that carries the worker's own token (nobody else may keep it
        alive). Raises UnknownWorker or PermissionError for this heartbeat alone, and the
        database's error if the batch could not be written."""
        beat = _Beat(worker_id, token)
        self._pending.append(beat)
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_soon())
        await beat.outcome

    async def _write_soon(self) -> None:
        await asyncio.sleep(self.linger)
        beats, self._pending, self._writing = self._pending, [], None
        try:
            outcomes = await self._write(beats)
        except Exception as error:
            for beat in beats:
                if not beat.outcome.done():
                    beat.outcome.set_exception(error)
            return
        for beat, outcome in zip(beats, outcomes, strict=True):
            if beat.outcome.done():  # its handler was cancelled (shutdown)
                continue
            if outcome is None:
                beat.outcome.set_result(None)
            else:
                beat.outcome.set_exception(outcome)

    async def _write(self, beats: list[_Beat]) -> list[Exception | None]:
        ids = {beat.worker_id for beat in beats}
        async with self.sessions() as session, session.begin():
            rows = await session.execute(
                select(Worker.id, Worker.token_hash).where(Worker.id.in_(ids), LIVE)
            )
            hashes: dict[str, str] = dict(rows.all())
            outcomes = [_judge(beat, hashes.get(beat.worker_id)) for beat in beats]
            alive = {b.worker_id for b, o in zip(beats, outcomes, strict=True) if o is None}
            if alive:
                await session.execute(
                    update(Worker).where(Worker.id.in_(alive)).values(last_heartbeat_at=utcnow())
                )
        return outcomes


def _judge(beat: _Beat, token_hash: str | None) -> Exception | None:
    if token_hash is None:
        return UnknownWorker(f"unknown worker {beat.worker_id!r}")
    if not header_holds(beat.token, token_hash):
        return PermissionError(f"unauthorized: heartbeat without worker {beat.worker_id!r}'s token")
    return None
