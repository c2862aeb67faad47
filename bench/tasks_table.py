"""The leader's periodic database work on a big tasks table: before and after the retention.

    .venv/bin/python bench/tasks_table.py                 # 1,000,000 tasks, SQLite
    .venv/bin/python bench/tasks_table.py --postgres      # the same on PostgreSQL
    .venv/bin/python bench/tasks_table.py --tasks 200000  # a smaller table

Fills a fresh, migrated database with N tasks (99% done, finished over the last N/100 s as at
100 tasks/s, 1% queued), then times, each the best of ``--repeat`` runs, side by side:

- the review's count by status: every status at every review (before), against the live
  statuses at every review and the finished ones once per 50 times their own cost (now);
- the operator page's throughput windows (last minute, last 5 minutes): the query as it was
  (status IN … AND finished_at ≥ …, GROUP BY status) against the one now (finished_at alone,
  read off the partial index ix_tasks_finished_at);
- the retention sweep: one transaction deleting the 500 oldest finished tasks.

PostgreSQL: a database of its own on WORKMESH_TEST_PG's server, analysed after the fill (as
autovacuum would), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import Task
from models.base import utcnow
from workmesh.db import migrate
from workmesh.dispatch.lifecycle import FINISHED, TaskStatus
from workmesh.services.assignments import count_by_status, delete_finished
from workmesh.services.counts import FINISHED_COUNT_SPACING, LIVE
from workmesh.web.overview import WINDOWS, throughput

FILL_CHUNK = 20_000
PG_ADMIN_URL = os.environ.get("WORKMESH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def fill(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    from rich.progress import Progress

    now = utcnow()
    with Progress(transient=True) as progress:
        filling = progress.add_task(f"storing {n:,} tasks", total=n)
        for start in range(0, n, FILL_CHUNK):
            rows = []
            for i in range(start, min(n, start + FILL_CHUNK)):
                done = i % 100 != 0
                rows.append(
                    {
                        "id": str(uuid.uuid4()),
                        "kind": "noop",
                        "payload": {"n": i},
                        "priority": i % 10,
                        "status": TaskStatus.DONE.value if done else TaskStatus.QUEUED.value,
                        "finished_at": now - timedelta(seconds=(n - i) / 100) if done else None,
                        "max_attempts": 3,
                        "attempt": 1,
                        "submitted_by": "bench",
                        "version": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            async with sessions() as session, session.begin():
                await session.execute(insert(Task), rows)
            progress.advance(filling, len(rows))


async def old_throughput(session: AsyncSession) -> dict[str, dict[str, int]]:
    """The operator page's query before the partial index (kept here as the anchor)."""
    now = utcnow()
    out = {}
    for name, seconds in WINDOWS.items():
        rows = await session.execute(
            select(Task.status, func.count())
            .where(
                Task.status.in_([TaskStatus.DONE.value, TaskStatus.DEAD.value]),
                Task.finished_at >= now - timedelta(seconds=seconds),
            )
            .group_by(Task.status)
        )
        out[name] = {str(status): int(count) for status, count in rows.all()}
    return out


async def best(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[Any]],
    repeat: int,
    commit: bool = False,
) -> float:
    """The best of ``repeat`` runs, in milliseconds (a rolled-back transaction unless
    ``commit``)."""
    times = []
    for _ in range(repeat):
        async with sessions() as session:
            started = time.perf_counter()
            await work(session)
            if commit:
                await session.commit()
            times.append((time.perf_counter() - started) * 1000)
            await session.rollback()
    return min(times)


async def measure(url: str, n: int, repeat: int, analyse: bool) -> None:
    await asyncio.to_thread(migrate, url)
    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        await fill(sessions, n)
        if analyse:
            async with engine.begin() as connection:
                await connection.execute(text("ANALYZE tasks"))
        every = await best(sessions, count_by_status, repeat)
        live = await best(sessions, lambda s: count_by_status(s, LIVE), repeat)
        finished = await best(sessions, lambda s: count_by_status(s, FINISHED), repeat)
        old_windows = await best(sessions, old_throughput, repeat)
        windows = await best(sessions, throughput, repeat)
        before = utcnow() - timedelta(seconds=n / 200)  # the older half
        sweep = await best(sessions, lambda s: delete_finished(s, before, 500), repeat, True)
    finally:
        await engine.dispose()
    # Per second of the review at the default 1 s interval: before, every status each time;
    # now, the live ones each time and the finished ones once per (1 + spacing) of their cost.
    spacing = FINISHED_COUNT_SPACING
    now_per_second = live + finished / max(1.0, finished * (spacing + 1) / 1000)
    rows = [
        ("review count by status, per review (ms)", f"{every:.1f}", f"{live:.1f} live"),
        (
            "  finished statuses counted (ms / how often)",
            "each review",
            f"{finished:.1f} / every {max(1.0, finished * (spacing + 1) / 1000):.1f} s",
        ),
        ("  database time per second of reviews (ms)", f"{every:.1f}", f"{now_per_second:.1f}"),
        ("operator page throughput windows (ms)", f"{old_windows:.1f}", f"{windows:.1f}"),
        ("retention sweep, 500 oldest deleted (ms)", "none", f"{sweep:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'before':>12}  {'now':>24}")
    for label, old, new in rows:
        print(f"{label:{width}}  {old:>12}  {new:>24}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks in the table")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each query (best kept)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    if args.tasks < 1000:
        parser.error("--tasks must be at least 1000")
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"tasks table benchmark: {args.tasks:,} tasks (99% done, 1% queued), {database}")
    if not args.postgres:
        with tempfile.TemporaryDirectory() as tmp:
            await measure(f"sqlite+aiosqlite:///{tmp}/tasks.db", args.tasks, args.repeat, False)
        return
    import asyncpg

    name = f"wm_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        await measure(f"{base}/{name}", args.tasks, args.repeat, True)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
