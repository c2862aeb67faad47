"""Prometheus metrics of the stock capability, in the process's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class StockMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "workmesh_stock_events_total",
            "Marketplace events seen by the pollers, by marketplace and kind.",
            ["marketplace", "kind"],
            registry=registry,
        )
        self.problems = Counter(
            "workmesh_stock_problems_total",
            "Bad data from a marketplace (reported, skipped), by marketplace and source.",
            ["marketplace", "source"],
            registry=registry,
        )
        self.push_requests = Counter(
            "workmesh_stock_push_requests_total",
            "Stock push requests by marketplace and outcome (ok, an HTTP status, unavailable).",
            ["marketplace", "outcome"],
            registry=registry,
        )
        self.pushed_items = Counter(
            "workmesh_stock_pushed_items_total",
            "Items in stock pushes by marketplace and outcome (accepted, refused, later).",
            ["marketplace", "outcome"],
            registry=registry,
        )
        self.polls = Counter(
            "workmesh_stock_polls_total",
            "Polls of a marketplace feed by outcome (ok, failed).",
            ["marketplace", "feed", "outcome"],
            registry=registry,
        )
