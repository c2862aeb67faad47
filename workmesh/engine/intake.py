"""Taking tasks off the intake queue, never more than there is room for, and assigning them.

The leader pulls with basic.get, one message per free slot, so everything it has not taken
stays in RabbitMQ in priority order. When the queue is empty it waits on a consumer with a
prefetch of one (a doorbell) rather than polling; the first delivery wakes it, it cancels the
consumer and pulls again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from models import Task
from models.base import utcnow
from rabbitmq.topology import INTAKE_QUEUE, TOKEN_HEADER
from schemas.tasks import TaskSubmit
from workmesh.dispatch.lifecycle import ASSIGNABLE, TaskStatus
from workmesh.engine.publisher import gather_confirms
from workmesh.engine.state import LeaderState
from workmesh.security import ADMIN_BOOTSTRAP, hash_token, same_hash
from workmesh.services import assignments

log = logging.getLogger(__name__)

# A task's id when the producer gave neither id nor idempotency key, derived from the AMQP
# message_id if there is one, so a redelivered message does not make a second task.
MESSAGE_ID_NAMESPACE = uuid.UUID("5b1f4a5e-0f7a-4a43-9a57-2b8f3e1c9d10")


def validation_summary(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


@dataclass
class IntakePlan:
    ack: list[AbstractIncomingMessage] = field(default_factory=list)
    requeue: list[AbstractIncomingMessage] = field(default_factory=list)
    dead: list[tuple[AbstractIncomingMessage, str]] = field(default_factory=list)
    assigned: list[Task] = field(default_factory=list)


class IntakeLoop:
    def __init__(self, state: LeaderState, queue: AbstractQueue) -> None:
        self.state = state
        self.queue = queue

    async def run(self) -> None:
        state = self.state
        while True:
            free = state.pool.free_capacity()
            if free <= 0:
                state.room.clear()
                await state.room.wait()
                continue
            want = min(free, state.settings.dispatch.batch_size)
            batch = await self._take(want)
            if not batch:
                batch = [await self._wait_for_one()]
                batch += await self._take(want - 1)
            await state.finish_even_if_stopped(self.dispatch(batch))

    async def _take(self, count: int) -> list[AbstractIncomingMessage]:
        taken: list[AbstractIncomingMessage] = []
        while len(taken) < count:
            message = await self.queue.get(no_ack=False, fail=False)
            if message is None:
                break
            taken.append(message)
        return taken

    async def _wait_for_one(self) -> AbstractIncomingMessage:
        arrived: asyncio.Future[AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future()
        )

        async def ring(message: AbstractIncomingMessage) -> None:
            if not arrived.done():
                arrived.set_result(message)

        tag = await self.queue.consume(ring, no_ack=False)
        try:
            return await arrived
        finally:
            await self.queue.cancel(tag)

    async def dispatch(self, messages: list[AbstractIncomingMessage]) -> None:
        state = self.state
        started = time.perf_counter()
        async with state.lock:
            try:
                plan = await self._plan(messages)
            except Exception:
                # The transaction rolled back; the pool may hold picks that never happened.
                await state.reload()
                raise
        pending: list[Any] = []
        for task in plan.assigned:
            assert task.worker_id is not None
            pending.append(
                state.publisher.assignment(
                    task.worker_id, assignments.assignment_body(task), task.priority
                )
            )
        await gather_confirms(pending)
        for message, reason in plan.dead:
            await state.publisher.dead_letter_message(message, reason, INTAKE_QUEUE)
            state.metrics.dead_letters.labels(source=INTAKE_QUEUE).inc()
        for message in plan.ack + [m for m, _ in plan.dead]:
            await message.ack()
        for message in plan.requeue:
            await message.nack(requeue=True)
        elapsed = time.perf_counter() - started
        state.metrics.batch_size.observe(len(messages))
        for task in plan.assigned:
            state.metrics.dispatch_latency.observe(elapsed)
            state.metrics.assignments.labels(
                tier=state.pool.workers[task.worker_id or ""].tier
            ).inc()
        await gather_confirms(
            state.publisher.event(
                "task.assigned",
                {"task_id": t.id, "worker_id": t.worker_id, "attempt": t.attempt},
            )
            for t in plan.assigned
        )

    async def _plan(self, messages: list[AbstractIncomingMessage]) -> IntakePlan:
        state, plan = self.state, IntakePlan()
        parsed: list[tuple[AbstractIncomingMessage, TaskSubmit, str]] = []
        for message in messages:
            try:
                submit = TaskSubmit.model_validate_json(message.body)
            except ValidationError as error:
                plan.dead.append((message, f"invalid task: {validation_summary(error)}"))
                continue
            parsed.append((message, submit, self._task_id(message, submit)))
        now, tick = utcnow(), time.monotonic()
        async with state.sessions() as session, session.begin():
            known = await assignments.tasks_for_intake(
                session,
                {task_id for _, _, task_id in parsed},
                {s.idempotency_key for _, s, _ in parsed if s.idempotency_key},
            )
            by_id = {t.id: t for t in known}
            by_key = {t.idempotency_key: t for t in known if t.idempotency_key}
            for message, submit, task_id in parsed:
                task = by_id.get(task_id)
                if task is None and submit.idempotency_key in by_key:
                    plan.ack.append(message)  # the same submission again: one task only
                    continue
                if task is None:
                    submitter = await self._submitter(message, session)
                    if submitter is None:
                        plan.dead.append(
                            (
                                message,
                                "unauthorized: a producer or admin token "
                                f"is required in the {TOKEN_HEADER} header",
                            )
                        )
                        continue
                    task = Task(
                        id=task_id,
                        kind=submit.kind,
                        payload=submit.payload,
                        priority=submit.priority,
                        status=TaskStatus.QUEUED.value,
                        idempotency_key=submit.idempotency_key,
                        attempt=1,
                        max_attempts=state.settings.dispatch.max_attempts,
                        submitted_by=submitter,
                        created_at=now,
                        updated_at=now,
                    )
                    session.add(task)
                    by_id[task_id] = task
                    if submit.idempotency_key:
                        by_key[submit.idempotency_key] = task
                status = TaskStatus(task.status)
                if status in ASSIGNABLE:
                    worker_id = state.pool.pick(avoid=task.rejected_by)
                    if worker_id is None:
                        plan.requeue.append(message)  # room vanished (a worker left)
                        if task in session.new:
                            session.expunge(task)
                            by_id.pop(task_id)
                        continue
                    assignments.mark_assigned(task, worker_id, now)
                    state.pool.assign(task.id, worker_id, tick)
                    plan.assigned.append(task)
                elif status is TaskStatus.ASSIGNED and message.redelivered:
                    # We may have died between the commit and the publish: send it again.
                    plan.assigned.append(task)
                plan.ack.append(message)
        return plan

    @staticmethod
    def _task_id(message: AbstractIncomingMessage, submit: TaskSubmit) -> str:
        if submit.id is not None:
            return str(submit.id)
        if message.message_id and not submit.idempotency_key:
            return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, message.message_id))
        return str(uuid.uuid4())

    async def _submitter(
        self, message: AbstractIncomingMessage, session: AsyncSession
    ) -> str | None:
        token = (message.headers or {}).get(TOKEN_HEADER)
        if isinstance(token, bytes):
            token = token.decode(errors="replace")
        if not isinstance(token, str) or not token:
            return None
        digest = hash_token(token)
        if same_hash(digest, hash_token(self.state.settings.security.admin_token)):
            return ADMIN_BOOTSTRAP
        if digest not in self.state.producer_tokens:
            # A token made since the last review: look again before refusing.
            self.state.producer_tokens = await assignments.producer_token_names(session)
        return self.state.producer_tokens.get(digest)
