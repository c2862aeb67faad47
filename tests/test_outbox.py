"""The API's outbox crosses off confirmed notes in groups, one delete for many changes."""

from __future__ import annotations

import asyncio

from sqlalchemy import event, func, select

from models import TaskAnnouncement
from workmesh.db import create_engine, session_factory
from workmesh.services import announcements
from workmesh.settings import DatabaseSettings


async def test_notes_confirmed_while_a_delete_runs_share_the_next(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    sessions = session_factory(engine)
    deletes: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM TASK_ANNOUNCEMENTS"):
            deletes.append(statement)

    try:
        async with sessions() as session, session.begin():
            notes = [announcements.record(session, f"task-{n}", "w", "done") for n in range(10)]
        outbox = announcements.Outbox(sessions)
        # Ten requests confirmed at once: the first deletes its own note, the other nine wait
        # for it and go in one more delete
        await asyncio.gather(*(outbox.cross_off(note) for note in notes))
        assert len(deletes) == 2
        async with sessions() as session:
            left = await session.scalar(select(func.count()).select_from(TaskAnnouncement))
        assert left == 0
        # One alone is one delete
        async with sessions() as session, session.begin():
            note = announcements.record(session, "task-x", "w", "failed")
        await outbox.cross_off(note)
        assert len(deletes) == 3
    finally:
        await engine.dispose()
