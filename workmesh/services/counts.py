"""Stored tasks by status, cheap enough to ask for often (the ``workmesh_tasks`` gauge,
``GET /api/v1/stats``, the operator overview)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from workmesh.dispatch.lifecycle import FINISHED, TaskStatus
from workmesh.services.assignments import count_by_status

LIVE = tuple(status for status in TaskStatus if status not in FINISHED)

# Finished tasks are counted again only after this many times as long as their last count
# took: counting them reads the whole finished part of the table, which grows with the
# retention, so a large table is counted less often (at most ~2% of the time).
FINISHED_COUNT_SPACING = 50
# A count quicker than this is exact at every read: spacing it out would save next to nothing,
# and a table this small is read by people who expect to see the task that just finished.
EXACT_BELOW = 0.02  # seconds (about 400 000 finished tasks on SQLite, 250 000 on PostgreSQL)


class StatusCounts:
    """Stored tasks by status: the live statuses (a few index ranges) at every read, the
    finished ones at every read while that is cheap, less often on a big table.

    One per process that asks often; concurrent readers share a finished count in progress.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.finished: dict[str, int] = {}
        self.finished_due = 0.0
        self._counting = asyncio.Lock()

    async def read(self, session: AsyncSession) -> dict[str, int]:
        counts = await count_by_status(session, LIVE)
        async with self._counting:
            if self.clock() >= self.finished_due:
                started = self.clock()
                self.finished = await count_by_status(session, FINISHED)
                ended = self.clock()
                took = ended - started
                self.finished_due = (
                    0.0 if took < EXACT_BELOW else ended + took * FINISHED_COUNT_SPACING
                )
        return counts | self.finished
