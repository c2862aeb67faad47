"""The intake queue's side of a leader turn: take tasks, never more than there is room for,
and assign them.

The leader pulls with basic.get, one message per free slot, so everything it has not taken
stays in RabbitMQ in priority order. While there is room, a consumer with a small prefetch (the
doorbell) stays on the queue: it brings a task that arrives while the cycle waits, and, as
long as it has less than its prefetch outstanding, it also tells the turn that the queue holds
nothing (RabbitMQ would have delivered it), so an idle or moderately loaded mesh asks no
basic.get that would come back empty. When the workers are full the doorbell stops and gives
back what it holds, so every waiting task is in RabbitMQ, in priority order
(workmesh/engine/cycle.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from rabbitmq.topology import INTAKE_QUEUE, MAX_PRIORITY, TOKEN_HEADER
from schemas.tasks import TaskSubmit
from workmesh.dispatch.lifecycle import ASSIGNABLE, TaskStatus
from workmesh.engine.publisher import gather_confirms
from workmesh.engine.state import LeaderState
from workmesh.security import ADMIN_BOOTSTRAP, hash_token, header_token, same_hash
from workmesh.services import assignments
from workmesh.services.task_rows import TaskRow

log = logging.getLogger(__name__)

# A task's id when the producer gave neither id nor idempotency key, derived from the AMQP
# message_id if there is one, so a redelivered message does not make a second task.
MESSAGE_ID_NAMESPACE = uuid.UUID("5b1f4a5e-0f7a-4a43-9a57-2b8f3e1c9d10")
# Channels a turn asks on at once (basic.get waits for its answer one at a time on each).
INTAKE_CHANNELS = 4
# The most the doorbell holds, and never more than the room when it starts. Above one, a turn
# that took the doorbell's last delivery still knows the queue is empty without asking; well
# above one, turns still waiting for their confirms rarely use the whole window up (a deaf
# doorbell, docs/design.md section 3).
DOORBELL_PREFETCH = 8


def validation_summary(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


UNAUTHORIZED = f"unauthorized: a producer or admin token is required in the {TOKEN_HEADER} header"


@dataclass
class IntakePlan:
    requeue: list[AbstractIncomingMessage] = field(default_factory=list)
    dead: list[tuple[AbstractIncomingMessage, str]] = field(default_factory=list)
    assigned: list[TaskRow] = field(default_factory=list)
    new_rows: list[TaskRow] = field(default_factory=list)  # to insert
    changed: list[TaskRow] = field(default_factory=list)  # to write


class Intake:
    """The intake queue's side of a leader cycle: take, plan (between the turn's read and write),
    publish the assignments, settle the messages."""

    def __init__(
        self, state: LeaderState, queues: list[AbstractQueue], doorbell: AbstractQueue
    ) -> None:
        self.state = state
        # The intake queue as seen from several channels: basic.get waits for its answer
        # one at a time on a channel, so a turn that needs many asks on all of them at once.
        self.queues = queues
        # The doorbell consumes on a channel of its own. A message it delivers just before
        # its cancel lands waits for the next turn; on a channel shared with basic.get, the
        # turn's one multiple-ack (settle) would have acknowledged it unprocessed, and its
        # own later ack closed the channel (RabbitMQ: "unknown delivery tag").
        self.queue = doorbell
        self.doorbell = asyncio.Event()  # set while the doorbell holds a message
        self._rung: list[AbstractIncomingMessage] = []
        self._tag: str | None = None  # the doorbell's consumer, while it listens
        self._prefetch = 0  # the doorbell channel's prefetch for the next consumer
        # The doorbell consumer's deliveries not yet acknowledged or given back, by id.
        self._outstanding: dict[int, AbstractIncomingMessage] = {}
        self._found_empty = False  # the last basic.get found the queue empty
        # Starting and stopping the doorbell one at a time: a stop that comes while a start
        # is on its way (the leader stopping) must find the consumer to cancel.
        self._switching = asyncio.Lock()
        self._admin_digest = hash_token(state.settings.security.admin_token)

    @classmethod
    async def open(cls, connection: AbstractConnection, state: LeaderState) -> Intake:
        """The intake queue on ``INTAKE_CHANNELS`` channels for basic.get and one more for
        the doorbell."""
        queues = []
        for _ in range(INTAKE_CHANNELS):
            # basic.get only: not limited by prefetch.
            channel = await connection.channel()
            queues.append(await channel.get_queue(INTAKE_QUEUE, ensure=False))
        doorbell = await connection.channel()
        return cls(state, queues, await doorbell.get_queue(INTAKE_QUEUE, ensure=False))

    @property
    def listening(self) -> bool:
        return self._tag is not None

    def known_empty(self) -> bool:
        """The doorbell listens and has room for another delivery, so RabbitMQ would have
        pushed anything the queue held (one still on its way rings the doorbell)."""
        return self._tag is not None and len(self._outstanding) < self._prefetch

    async def take(self, count: int, rung_only: bool = False) -> list[AbstractIncomingMessage]:
        """Up to ``count`` messages: what the doorbell holds, then one basic.get each, highest
        priority first.

        ``rung_only``: just what the doorbell brought. A lone arrival is then dispatched
        without first asking RabbitMQ for more (a round trip that would find nothing);
        if a burst is arriving, the next turn takes the rest.
        """
        if count <= 0:
            return []
        taken, self._rung = self._rung[:count], self._rung[count:]
        if not self._rung:
            self.doorbell.clear()
        wanted = count - len(taken)
        if (rung_only and taken) or wanted == 0 or self.known_empty():
            return taken
        if self._found_empty:
            # Idle until now: one basic.get sees whether a burst began before four do.
            first = await self.queues[0].get(no_ack=False, fail=False)
            if first is None:
                return taken
            taken.append(first)
            wanted -= 1
        empty = False

        async def ask(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
            nonlocal wanted, empty
            got: list[AbstractIncomingMessage] = []
            while wanted > 0 and not empty:
                wanted -= 1
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    empty, wanted = True, wanted + 1
                    break
                got.append(message)
            return got

        askers = self.queues[: max(1, min(len(self.queues), wanted))] if wanted > 0 else []
        for got in await asyncio.gather(*(ask(queue) for queue in askers)):
            taken += got
        self._found_empty = empty
        # Each channel hands out its share in priority order; the turn wants it overall.
        taken.sort(key=lambda m: -min(m.priority or 0, MAX_PRIORITY))
        return taken

    def _deaf(self) -> bool:
        """The doorbell listens but cannot ring: every delivery its prefetch allows was taken
        by turns that have not settled yet, so RabbitMQ holds new arrivals back."""
        return self._tag is not None and not self._rung and not self.known_empty()

    async def listen(self, room: int) -> None:
        """Start the doorbell, if it is not on: a consumer with a prefetch of at most
        ``room`` that rings when a message arrives. One that cannot ring (``_deaf``) is
        started again: the prefetch counts per consumer, so a new one has its whole window,
        and its predecessor's deliveries are settled by their turns as usual."""
        async with self._switching:
            if self._deaf():
                await self._cancel()
            if self._tag is None:
                await self._start(room)

    async def _start(self, room: int) -> None:
        outstanding: dict[int, AbstractIncomingMessage] = {}
        self._outstanding = outstanding

        async def ring(message: AbstractIncomingMessage) -> None:
            outstanding[id(message)] = message
            self._rung.append(message)
            self.doorbell.set()

        prefetch = max(1, min(room, DOORBELL_PREFETCH))
        if prefetch != self._prefetch:
            await self.queue.channel.set_qos(prefetch_count=prefetch)
            self._prefetch = prefetch
        self._tag = await self.queue.consume(ring, no_ack=False)

    async def stop_listening(self) -> None:
        """Stop the doorbell and put back what it holds: with no room, every waiting task
        belongs in RabbitMQ, in priority order."""
        async with self._switching:
            await self._cancel()
        held, self._rung = self._rung, []
        self.doorbell.clear()
        for message in held:
            self._outstanding.pop(id(message), None)
            await message.nack(requeue=True)

    async def _cancel(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None:
            await self.queue.cancel(tag)

    async def publish(self, plan: IntakePlan) -> None:
        state = self.state
        await gather_confirms(
            state.publisher.assignment(
                task.worker_id or "", assignments.assignment_body(task), task.priority
            )
            for task in plan.assigned
        )
        for message, reason in plan.dead:
            await state.publisher.dead_letter_message(message, reason, INTAKE_QUEUE)
            state.metrics.dead_letters.labels(source=INTAKE_QUEUE).inc()

    async def settle(self, messages: list[AbstractIncomingMessage], plan: IntakePlan) -> None:
        for message in plan.requeue:
            await message.nack(requeue=True)
        # Everything else is done with: one ack per channel covers it (the requeued ones were
        # settled just above, and turns settle in order, so every earlier delivery on the
        # channel is settled already; later turns' deliveries have higher tags).
        requeued = {id(m) for m in plan.requeue}
        last_on_channel: dict[int, AbstractIncomingMessage] = {}
        for message in messages:
            if id(message) in requeued:
                continue
            key = id(message.channel)
            last = last_on_channel.get(key)
            if last is None or (message.delivery_tag or 0) > (last.delivery_tag or 0):
                last_on_channel[key] = message
        for message in last_on_channel.values():
            await message.ack(multiple=True)
        for message in messages:
            self._outstanding.pop(id(message), None)
        metrics = self.state.metrics
        metrics.batch_size.observe(len(messages))
        publisher = self.state.publisher
        for task in plan.assigned:
            worker = self.state.pool.workers.get(task.worker_id or "")
            metrics.assignments.labels(tier=worker.tier if worker else "unknown").inc()
            assigned = {"task_id": task.id, "worker_id": task.worker_id, "attempt": task.attempt}
            publisher.event_soon("task.assigned", assigned)
            if worker is not None and worker.wants_notices:
                publisher.notice_soon(assigned)

    def wanted_rows(self, messages: list[AbstractIncomingMessage]) -> tuple[set[str], set[str]]:
        """The task ids and idempotency keys a batch names (for one shared look-up)."""
        ids: set[str] = set()
        keys: set[str] = set()
        for message in messages:
            try:
                submit = TaskSubmit.model_validate_json(message.body)
            except ValidationError:
                continue
            ids.add(self._task_id(message, submit))
            if submit.idempotency_key:
                keys.add(submit.idempotency_key)
        return ids, keys

    async def know_submitters(self, messages: list[AbstractIncomingMessage]) -> None:
        """Read the producer tokens again if a message carries one made since the last
        review, so that the plan can tell who submitted each task without the database."""
        for message in messages:
            digest = _token_digest(message)
            if digest is None or same_hash(digest, self._admin_digest):
                continue
            if digest not in self.state.producer_tokens:
                async with self.state.sessions() as session:
                    self.state.producer_tokens = await assignments.producer_token_names(session)
                return

    def plan(
        self, messages: list[AbstractIncomingMessage], known: list[TaskRow], now: datetime
    ) -> IntakePlan:
        """Make new tasks and assign every assignable one, picking workers by least load;
        the plan lists the rows for the turn to insert and write."""
        state, plan = self.state, IntakePlan()
        parsed: list[tuple[AbstractIncomingMessage, TaskSubmit, str]] = []
        for message in messages:
            try:
                submit = TaskSubmit.model_validate_json(message.body)
            except ValidationError as error:
                plan.dead.append((message, f"invalid task: {validation_summary(error)}"))
                continue
            parsed.append((message, submit, self._task_id(message, submit)))
        tick = time.monotonic()
        new_rows, changed = plan.new_rows, plan.changed
        by_id = {t.id: t for t in known}
        by_key = {t.idempotency_key: t for t in known if t.idempotency_key}
        for message, submit, task_id in parsed:
            task = by_id.get(task_id)
            if task is None and submit.idempotency_key in by_key:
                continue  # the same submission again: one task only
            fresh = task is None
            if task is None:
                submitter = self._submitter(message)
                if submitter is None:
                    plan.dead.append((message, UNAUTHORIZED))
                    continue
                task = TaskRow(
                    id=task_id,
                    kind=submit.kind,
                    payload=submit.payload,
                    priority=submit.priority,
                    status=TaskStatus.QUEUED.value,
                    idempotency_key=submit.idempotency_key,
                    worker_id=None,
                    attempt=1,
                    max_attempts=state.settings.dispatch.max_attempts,
                    rejected_by=None,
                    error=None,
                    assigned_at=None,
                    finished_at=None,
                    version=1,
                    submitted_by=submitter,
                )
            status = TaskStatus(task.status)
            if status in ASSIGNABLE:
                worker_id = state.pool.pick(avoid=task.rejected_by)
                if worker_id is None:
                    plan.requeue.append(message)  # room vanished (a worker left)
                    continue
                assignments.mark_assigned(task, worker_id, now)
                state.pool.assign(task.id, worker_id, tick)
                plan.assigned.append(task)
                (new_rows if fresh else changed).append(task)
                by_id[task.id] = task
                if task.idempotency_key:
                    by_key[task.idempotency_key] = task
            elif status is TaskStatus.ASSIGNED and message.redelivered:
                # We may have died between the commit and the publish: send it again.
                plan.assigned.append(task)
        return plan

    @staticmethod
    def _task_id(message: AbstractIncomingMessage, submit: TaskSubmit) -> str:
        if submit.id is not None:
            return str(submit.id)
        if message.message_id and not submit.idempotency_key:
            return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, message.message_id))
        return str(uuid.uuid4())

    def _submitter(self, message: AbstractIncomingMessage) -> str | None:
        """Who submitted the task: a producer token's name, the admin, or None."""
        digest = _token_digest(message)
        if digest is None:
            return None
        if same_hash(digest, self._admin_digest):
            return ADMIN_BOOTSTRAP
        return self.state.producer_tokens.get(digest)


def _token_digest(message: AbstractIncomingMessage) -> str | None:
    token = header_token((message.headers or {}).get(TOKEN_HEADER))
    return None if token is None else hash_token(token)
