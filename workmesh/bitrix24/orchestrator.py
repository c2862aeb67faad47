"""Gather reception records into sync batches and run several batches at once.

Each record's consumer waits on a future until the batch holding it has committed; only then
is its message acknowledged. A batch goes when it is full (``batch_size``) or when its oldest
record has waited ``flush_timeout``, so a lone record is not stuck. A record whose ident_id or
phone is in a batch still running waits for the next one: two batches creating the same
contact at once would make two contacts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from schemas.receptions import Reception
from workmesh.bitrix24.batch import BatchSync, Outcome, Result
from workmesh.bitrix24.metrics import SyncMetrics

log = logging.getLogger(__name__)


class SyncStopped(Exception):
    """The sync is stopping: the record goes back to the queue."""


@dataclass
class _Waiting:
    reception: Reception
    future: asyncio.Future[Outcome]
    arrived: float
    keys: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = frozenset({f"ident:{self.reception.ident_id}", f"phone:{self.reception.phone}"})


class ReceptionSync:
    def __init__(
        self,
        batches: BatchSync,
        metrics: SyncMetrics,
        *,
        batch_size: int,
        flush_timeout: float,
        batches_in_flight: int,
    ) -> None:
        self.batches = batches
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_timeout = flush_timeout
        self.batches_in_flight = batches_in_flight
        self._waiting: list[_Waiting] = []
        self._busy: set[str] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = False

    async def submit(self, reception: Reception) -> Outcome:
        """Sync one record with others; returns once its outcome is committed."""
        if self._stopping:
            raise SyncStopped("the Bitrix24 sync is stopping")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(reception, loop.create_future(), loop.time())
        self._waiting.append(waiting)
        self._flush()
        return await waiting.future

    async def stop(self) -> None:
        """Send what waits, let running batches finish; later records go back to the queue."""
        self._stopping = True
        while self._waiting or self._running:
            self._flush(force=True)
            if self._running:
                await asyncio.wait(set(self._running))
            elif self._waiting:
                await asyncio.sleep(0)  # only busy keys left: their batch is finishing
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        while len(self._running) < self.batches_in_flight:
            overdue = bool(self._waiting) and (
                force or loop.time() - self._waiting[0].arrived >= self.flush_timeout
            )
            batch = self._take(partial=overdue)
            if not batch:
                break
            task = loop.create_task(self._run(batch))
            self._running.add(task)
        self._arm_timer()

    def _take(self, *, partial: bool) -> list[_Waiting]:
        """The oldest records whose keys are free: a full batch, or what there is if ``partial``."""
        chosen: list[_Waiting] = []
        for waiting in self._waiting:
            if len(chosen) == self.batch_size:
                break
            if not waiting.keys & self._busy:
                chosen.append(waiting)
        if not chosen or (len(chosen) < self.batch_size and not partial):
            return []
        taken = {id(w) for w in chosen}
        self._waiting = [w for w in self._waiting if id(w) not in taken]
        for waiting in chosen:
            self._busy |= waiting.keys
        return chosen

    def _arm_timer(self) -> None:
        if self._timer is not None or not self._waiting:
            return
        loop = asyncio.get_running_loop()
        due = self._waiting[0].arrived + self.flush_timeout - loop.time()
        if due <= 0:
            # Overdue yet not sent: every slot is busy, and the batch that ends next flushes.
            return
        self._timer = loop.call_later(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._flush()

    async def _run(self, batch: list[_Waiting]) -> None:
        self.metrics.record_batch.observe(len(batch))
        try:
            outcomes = await self.batches.run([w.reception for w in batch])
        except Exception as error:
            # Nothing of this batch is decided; its records come back later, and whatever
            # reached Bitrix24 is found by the look-ups then.
            log.warning("a Bitrix24 sync batch of %d failed: %r", len(batch), error)
            outcomes = [Outcome(Result.RETRY, f"sync batch failed: {error!r}")] * len(batch)
        finally:
            for waiting in batch:
                self._busy -= waiting.keys
            current = asyncio.current_task()
            if current is not None:
                self._running.discard(current)
        for waiting, outcome in zip(batch, outcomes, strict=True):
            self.metrics.records.labels(outcome=outcome.result.value).inc()
            if not waiting.future.done():
                waiting.future.set_result(outcome)
        if not self._stopping:
            self._flush()
