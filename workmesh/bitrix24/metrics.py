"""Prometheus metrics of the Bitrix24 sync (``workmesh_bitrix24_*``)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "workmesh_bitrix24_records_total",
            "Reception records by outcome (synced, unchanged, stale, superseded, retry, dead).",
            ["outcome"],
            registry=registry,
        )
        self.calls = Counter(
            "workmesh_bitrix24_calls_total",
            "HTTP calls to Bitrix24 by method (a batch is one call) and outcome.",
            ["method", "outcome"],
            registry=registry,
        )
        self.commands = Counter(
            "workmesh_bitrix24_commands_total",
            "Commands sent inside batch calls, by method.",
            ["method"],
            registry=registry,
        )
        self.batch_fill = Histogram(
            "workmesh_bitrix24_batch_fill",
            "Commands per batch call (at most 50).",
            buckets=(1, 5, 10, 20, 30, 40, 45, 49, 50),
            registry=registry,
        )
        self.record_batch = Histogram(
            "workmesh_bitrix24_record_batch_size",
            "Records per sync batch.",
            buckets=(1, 2, 5, 10, 20, 30, 40, 50),
            registry=registry,
        )
        self.call_seconds = Histogram(
            "workmesh_bitrix24_call_seconds",
            "Time per HTTP call to Bitrix24, by method (limit waits not included).",
            ["method"],
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10),
            registry=registry,
        )
        self.phase_seconds = Histogram(
            "workmesh_bitrix24_phase_seconds",
            "Time per phase of a sync batch (the seed's batch_find_contacts, batch_find_deals, "
            "process_batch).",
            ["phase"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )

    # CallObserver
    def called(self, method: str, seconds: float, outcome: str) -> None:
        self.calls.labels(method=method, outcome=outcome).inc()
        self.call_seconds.labels(method=method).observe(seconds)

    def batched(self, methods: Sequence[str]) -> None:
        self.batch_fill.observe(len(methods))
        for method, count in Tally(methods).items():
            self.commands.labels(method=method).inc(count)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds.labels(phase=name).observe(time.perf_counter() - started)
