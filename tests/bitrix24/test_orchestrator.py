"""Batching of records, without a portal: batch size, flush of a lone record, batches in
flight, and no phone or ident_id in two running batches at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from schemas.receptions import Reception
from workmesh.bitrix24.batch import Outcome, Result
from workmesh.bitrix24.metrics import SyncMetrics
from workmesh.bitrix24.orchestrator import ReceptionSync, SyncStopped

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class SlowBatches:
    """Stands in for BatchSync: records what runs together."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.running: list[set[str]] = []
        self.max_running = 0
        self.overlaps: list[str] = []

    async def run(self, receptions: Sequence[Reception]) -> list[Outcome]:
        keys = {r.ident_id for r in receptions} | {r.phone for r in receptions}
        for other in self.running:
            self.overlaps.extend(sorted(keys & other))
        self.running.append(keys)
        self.max_running = max(self.max_running, len(self.running))
        self.batches.append([r.ident_id for r in receptions])
        await asyncio.sleep(0.02)
        self.running.remove(keys)
        return [Outcome(Result.SYNCED)] * len(receptions)


def record(n: int, phone: int | None = None) -> Reception:
    return Reception(
        ident_id=f"r-{n}",
        phone=f"+7900{phone if phone is not None else n:07d}",
        patient_name="P",
        starts_at=T0,
        updated_at=T0,
    )


def sync_with(batches: SlowBatches, **settings: float) -> ReceptionSync:
    values = {"batch_size": 5, "flush_timeout": 0.05, "batches_in_flight": 3, **settings}
    return ReceptionSync(
        batches,  # type: ignore[arg-type]
        SyncMetrics(CollectorRegistry()),
        batch_size=int(values["batch_size"]),
        flush_timeout=values["flush_timeout"],
        batches_in_flight=int(values["batches_in_flight"]),
    )


async def test_records_go_in_full_batches_several_at_once() -> None:
    batches = SlowBatches()
    sync = sync_with(batches)
    outcomes = await asyncio.gather(*(sync.submit(record(n)) for n in range(40)))
    assert {o.result for o in outcomes} == {Result.SYNCED}
    assert sorted(len(b) for b in batches.batches) == [5] * 8
    assert 1 < batches.max_running <= 3


async def test_a_lone_record_is_flushed_after_the_timeout() -> None:
    batches = SlowBatches()
    sync = sync_with(batches, flush_timeout=0.02)
    outcome = await asyncio.wait_for(sync.submit(record(1)), 5)
    assert outcome.result is Result.SYNCED
    assert batches.batches == [["r-1"]]


async def test_a_phone_or_ident_is_never_in_two_running_batches() -> None:
    batches = SlowBatches()
    sync = sync_with(batches, batch_size=3, batches_in_flight=4)
    # Many records of few patients, and repeats of the same ident_ids.
    records = [record(n % 7, phone=n % 4) for n in range(60)]
    await asyncio.gather(*(sync.submit(r) for r in records))
    assert batches.overlaps == []
    assert sum(len(b) for b in batches.batches) == 60


async def test_after_stop_new_records_are_refused_and_waiting_ones_finish() -> None:
    batches = SlowBatches()
    sync = sync_with(batches, flush_timeout=10)
    waiting = asyncio.ensure_future(sync.submit(record(1)))
    await asyncio.sleep(0)
    await sync.stop()
    assert (await waiting).result is Result.SYNCED
    with pytest.raises(SyncStopped):
        await sync.submit(record(2))
