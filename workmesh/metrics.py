"""Prometheus metrics, in a registry of the process's own (not the global default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.tasks = Gauge(
            "workmesh_tasks", "Tasks by status (from the database).", ["status"], registry=r
        )
        self.worker_load = Gauge(
            "workmesh_worker_load",
            "Unfinished tasks on each worker.",
            ["worker_id", "tier"],
            registry=r,
        )
        self.worker_capacity = Gauge(
            "workmesh_worker_capacity",
            "Capacity of each worker.",
            ["worker_id", "tier"],
            registry=r,
        )
        self.worker_online = Gauge(
            "workmesh_worker_online",
            "1 while the worker's heartbeats arrive.",
            ["worker_id"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "workmesh_queue_depth", "Messages ready in a mesh queue.", ["queue"], registry=r
        )
        self.dispatch_latency = Histogram(
            "workmesh_dispatch_latency_seconds",
            "From taking a task off the intake queue to its assignment being confirmed.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.confirm_wait = Histogram(
            "workmesh_dispatch_confirm_seconds",
            "How long a leader turn waited for RabbitMQ to confirm what it published.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.batch_size = Histogram(
            "workmesh_dispatch_batch_size",
            "Intake messages per grouped commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.assignments = Counter(
            "workmesh_assignments_total", "Tasks assigned to workers.", ["tier"], registry=r
        )
        self.unannounced = Counter(
            "workmesh_unannounced_changes_total",
            "Task changes the API committed but did not announce; the leader followed them up.",
            ["event"],
            registry=r,
        )
        self.reports = Counter(
            "workmesh_reports_total",
            "Worker reports by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "workmesh_dead_letters_total",
            "Messages the mesh dead-lettered, by source.",
            ["source"],
            registry=r,
        )
        self.tasks_deleted = Counter(
            "workmesh_tasks_deleted_total",
            "Finished tasks deleted after the retention (WORKMESH_DISPATCH_RETENTION).",
            registry=r,
        )
        self.desired_reserve = Gauge(
            "workmesh_pool_desired_reserve",
            "Reserve workers the scaling policy wants engaged.",
            registry=r,
        )
        self.leader = Gauge(
            "workmesh_dispatcher_leader",
            "1 while this process is the dispatcher leader.",
            registry=r,
        )
        self.http_requests = Counter(
            "workmesh_http_requests_total",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )

    def forget_leader_view(self) -> None:
        """A process that stops leading must not keep exporting what it saw as leader."""
        self.leader.set(0)
        self.desired_reserve.set(0)
        for gauge in (
            self.tasks,
            self.worker_load,
            self.worker_capacity,
            self.worker_online,
            self.queue_depth,
        ):
            gauge.clear()
