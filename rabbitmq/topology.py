"""The mesh's RabbitMQ topology as named constants, declared idempotently from one place.

Every work queue dead-letters to ``workmesh.dead``; messages that fail for a reason the mesh
knows are published there by the mesh itself, with the reason in the ``x-workmesh-reason``
header (RabbitMQ's own dead-lettering only says "rejected" or "expired").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

TASKS_EXCHANGE = "workmesh.tasks"
EVENTS_EXCHANGE = "workmesh.events"
DEAD_EXCHANGE = "workmesh.dead"

SUBMIT_ROUTING_KEY = "submit"
INTAKE_QUEUE = "workmesh.tasks.intake"
DEAD_QUEUE = "workmesh.dead"
REPORTS_QUEUE = "workmesh.dispatcher.reports"
HEARTBEATS_QUEUE = "workmesh.dispatcher.heartbeats"
# Declared exclusive by the dispatcher that leads; RabbitMQ refuses it to everyone else
# (RESOURCE_LOCKED) until that connection closes, which makes it a lock held by a live process.
LEADER_LOCK_QUEUE = "workmesh.dispatcher.leader"
# Assignments for workers to notify (webhook, email) when no channel of theirs is live.
NOTIFY_QUEUE = "workmesh.notify"
WORKER_QUEUE_PREFIX = "workmesh.worker."
RETRY_QUEUE_PREFIX = "workmesh.tasks.retry."

# Priorities 0..9 are the contract; ten levels also keep RabbitMQ's per-priority cost small
# (its docs advise staying well under 255).
MAX_PRIORITY = 9

# Routing keys on workmesh.events.
REPORT_KEYS = ("task.started", "task.done", "task.failed", "task.rejected")
# Published by the mesh when a task leaves a worker for a reason other than the worker's
# own report; the leader listens so that its count of each worker's load stays true.
RELEASE_KEYS = ("task.cancelled",)
HEARTBEAT_KEY = "worker.heartbeat"

# Message headers.
TOKEN_HEADER = "x-workmesh-token"
REASON_HEADER = "x-workmesh-reason"
ORIGIN_HEADER = "x-workmesh-origin"

_DEAD_LETTER = {"x-dead-letter-exchange": DEAD_EXCHANGE}
# Exactly the contract's levels 0..9: RabbitMQ treats a higher message priority as the maximum,
# so a producer that sets 12 cannot jump ahead of 9.
_PRIORITY = {"x-max-priority": MAX_PRIORITY}


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)


def worker_queue_name(worker_id: str) -> str:
    return f"{WORKER_QUEUE_PREFIX}{worker_id}"


def worker_queue(worker_id: str) -> QueueSpec:
    # A priority queue too: when a worker holds several assignments, the urgent one comes first.
    return QueueSpec(worker_queue_name(worker_id), {**_DEAD_LETTER, **_PRIORITY})


def retry_queue(delay_seconds: float) -> QueueSpec:
    """A delay stage: messages wait out the queue's TTL, then dead-letter back into intake.

    The TTL is per queue, not per message, so a long delay never holds up a short one
    behind it (RabbitMQ only expires messages at the head of a queue). The delay is in the
    name, so changing the configured delays makes new queues instead of clashing with old
    ones' arguments.
    """
    ttl_ms = round(delay_seconds * 1000)
    return QueueSpec(
        f"{RETRY_QUEUE_PREFIX}{ttl_ms}ms",
        {
            "x-message-ttl": ttl_ms,
            "x-dead-letter-exchange": TASKS_EXCHANGE,
            "x-dead-letter-routing-key": SUBMIT_ROUTING_KEY,
        },
    )


INTAKE = QueueSpec(
    INTAKE_QUEUE,
    {**_DEAD_LETTER, **_PRIORITY},
    ((TASKS_EXCHANGE, SUBMIT_ROUTING_KEY),),
)
REPORTS = QueueSpec(
    REPORTS_QUEUE,
    dict(_DEAD_LETTER),
    tuple((EVENTS_EXCHANGE, key) for key in (*REPORT_KEYS, *RELEASE_KEYS)),
)
HEARTBEATS = QueueSpec(
    HEARTBEATS_QUEUE,
    # A heartbeat that waited a minute says nothing about now; dropping it is right, so
    # expiry here goes nowhere instead of filling the dead-letter queue.
    {"x-message-ttl": 60_000},
    ((EVENTS_EXCHANGE, HEARTBEAT_KEY),),
)
# Bound to nothing: the dispatcher leader sends it the assignments of workers that want notices
# (through the default exchange), so the notifier never handles a bot's assignment.
NOTIFY = QueueSpec(NOTIFY_QUEUE, dict(_DEAD_LETTER), ())
# Bindings earlier versions made, removed at start: (queue, exchange, routing key).
RETIRED_BINDINGS = ((NOTIFY_QUEUE, EVENTS_EXCHANGE, "task.assigned"),)
DEAD = QueueSpec(DEAD_QUEUE, {}, ((DEAD_EXCHANGE, ""),))


@dataclass
class Topology:
    tasks: AbstractExchange
    events: AbstractExchange
    dead: AbstractExchange


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    for exchange, key in spec.bindings:
        await queue.bind(exchange, routing_key=key)
    return queue


async def declare_topology(
    channel: AbstractChannel, retry_delays: Sequence[float], worker_ids: Sequence[str] = ()
) -> Topology:
    """Declare every exchange and queue the mesh uses; safe to run at every start."""
    tasks = await channel.declare_exchange(
        TASKS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    for spec in (DEAD, INTAKE, REPORTS, HEARTBEATS, NOTIFY):
        await declare_queue(channel, spec)
    for queue_name, exchange, key in RETIRED_BINDINGS:
        # RabbitMQ answers unbind-ok for a binding that is not there.
        queue = await channel.get_queue(queue_name, ensure=False)
        await queue.unbind(exchange, routing_key=key)
    for delay in retry_delays:
        await declare_queue(channel, retry_queue(delay))
    for worker_id in worker_ids:
        await declare_queue(channel, worker_queue(worker_id))
    return Topology(tasks=tasks, events=events, dead=dead)
