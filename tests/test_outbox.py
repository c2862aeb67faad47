"""The API's outbox crosses off confirmed notes in groups, one delete for many changes."""

from __future__ import annotations

from sqlalchemy import event, func, select

from models import TaskAnnouncement
from tests.conftest import eventually
from workmesh.db import create_engine, session_factory
from workmesh.services import announcements
from workmesh.settings import DatabaseSettings


async def test_notes_confirmed_together_share_one_delete(database_url: str) -> None:
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
        # Ten changes confirmed together: one delete, off the requests that confirmed them
        for note in notes:
            outbox.cross_off(note)
        assert deletes == []

        async def left() -> int:
            async with sessions() as session:
                found = await session.scalar(select(func.count()).select_from(TaskAnnouncement))
            return int(found or 0)

        async def none_left() -> bool:
            return await left() == 0

        await eventually(none_left, message="crossed off")
        assert len(deletes) == 1
        # One more alone is one more delete; and what waits at shutdown is crossed off then
        async with sessions() as session, session.begin():
            lone = announcements.record(session, "task-x", "w", "failed")
            last = announcements.record(session, "task-y", "w", "failed")
        outbox.cross_off(lone)
        await eventually(lambda: len(deletes) == 2, message="a second delete")
        await eventually(lambda: outbox._flushing is None or outbox._flushing.done())
        outbox.cross_off(last)
        await outbox.close()
        assert len(deletes) == 3
        assert await left() == 0
    finally:
        await engine.dispose()
