"""Applying the workers' reports (task.started/done/failed/rejected) in grouped commits.

Reports arrive over AMQP from workers, and from the HTTP API after it has applied a worker's
status change itself; applying one twice is harmless, and its follow-up (a retry, a requeue, a
dead letter) is published again rather than risk losing it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from rabbitmq.topology import REPORTS_QUEUE, TOKEN_HEADER, retry_queue
from schemas.tasks import TaskReport
from workmesh.dispatch.lifecycle import (
    ON_WORKER,
    FollowUp,
    LifecycleError,
    Report,
    TaskStatus,
    next_state,
    repeated_outcome,
)
from workmesh.engine.intake import validation_summary
from workmesh.engine.publisher import gather_confirms
from workmesh.engine.state import LeaderState
from workmesh.security import header_holds
from workmesh.services import assignments
from workmesh.services.assignments import TaskState, apply_transition
from workmesh.services.task_rows import TaskRow

log = logging.getLogger(__name__)


_FINAL = frozenset({"done", "failed", "rejected", "cancelled"})


class Refused(Exception):
    """A report that can never be applied; the message says why."""


@dataclass
class ReportPlan:
    dead: list[tuple[AbstractIncomingMessage, str]] = field(default_factory=list)
    follow_ups: list[tuple[TaskRow, FollowUp]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    changed: dict[str, TaskRow] = field(default_factory=dict)  # to write, by task id


class ReportApplier:
    """The reports' side of a leader cycle: collect, plan (between the turn's read and write),
    release the workers' room, publish follow-ups, settle the messages."""

    def __init__(self, state: LeaderState) -> None:
        self.state = state
        self._inbox: list[AbstractIncomingMessage] = []
        self.arrived = asyncio.Event()

    async def receive(self, message: AbstractIncomingMessage) -> None:
        """The consumer callback: collect, so that one commit serves many reports."""
        self._inbox.append(message)
        self.arrived.set()

    def put_back(self, messages: list[AbstractIncomingMessage]) -> None:
        """Return drained reports to the front of the inbox, in their order."""
        self._inbox[:0] = messages

    def drain(self) -> list[AbstractIncomingMessage]:
        self.arrived.clear()
        batch, self._inbox = self._inbox, []
        return batch

    def expected_room(self, messages: list[AbstractIncomingMessage]) -> int:
        """How many slots these reports will likely free: the final reports from the worker
        a task is on. Only a guess, to know how many intake messages to take alongside."""
        freeing = 0
        for message in messages:
            if (message.routing_key or "").removeprefix("task.") in _FINAL:
                try:
                    body = json.loads(message.body)
                    on = self.state.pool.task_worker.get(body["task_id"])
                    freeing += on is not None and on == body.get("worker_id")
                except (ValueError, KeyError, TypeError):
                    continue
        return freeing

    def release(self, plan: ReportPlan) -> None:
        tick = time.monotonic()
        for task_id in plan.touched:
            self.state.pool.release(task_id, tick)

    async def publish(self, plan: ReportPlan) -> None:
        state = self.state
        await gather_confirms(
            publish_follow_up(state, task, follow_up) for task, follow_up in plan.follow_ups
        )
        for message, reason in plan.dead:
            await state.publisher.dead_letter_message(message, reason, REPORTS_QUEUE)
            state.metrics.dead_letters.labels(source=REPORTS_QUEUE).inc()

    @staticmethod
    async def settle(messages: list[AbstractIncomingMessage]) -> None:
        # One ack settles the whole batch: reports are collected in delivery order and a
        # cycle is finished before the next one drains the inbox.
        if messages:
            await max(messages, key=lambda m: m.delivery_tag or 0).ack(multiple=True)

    @staticmethod
    def wanted_rows(messages: list[AbstractIncomingMessage]) -> set[str]:
        ids = set()
        for message in messages:
            try:
                ids.add(str(json.loads(message.body)["task_id"]))
            except (ValueError, KeyError, TypeError):
                continue
        return ids

    def plan(
        self,
        messages: list[AbstractIncomingMessage],
        known: list[TaskRow],
    ) -> ReportPlan:
        plan = ReportPlan()
        parsed: list[tuple[AbstractIncomingMessage, str, dict[str, Any]]] = []
        for message in messages:
            try:
                report = TaskReport.model_validate_json(message.body)
            except ValidationError as error:
                plan.dead.append((message, f"invalid report: {validation_summary(error)}"))
                continue
            parsed.append((message, message.routing_key or "", report.model_dump()))
        tasks = {row.id: row for row in known}
        changed = plan.changed
        for message, routing_key, body in parsed:
            task = tasks.get(body["task_id"])
            kind = routing_key.removeprefix("task.")
            try:
                if task is None:
                    raise Refused(f"unknown task {body['task_id']!r}")
                if kind == "cancelled":  # the API cancelled it; nothing to apply here
                    outcome = "released"
                else:
                    self._check_token(message, body["worker_id"])
                    outcome = self._apply_one(task, Report(kind), body, plan)
                    if outcome == "applied":
                        changed[task.id] = task
            except (Refused, LifecycleError, ValueError) as error:
                plan.dead.append((message, str(error)))
                self.state.metrics.reports.labels(kind=kind, outcome="refused").inc()
                continue
            self.state.metrics.reports.labels(kind=kind, outcome=outcome).inc()
            if TaskStatus(task.status) not in ON_WORKER:
                plan.touched.add(task.id)
        return plan

    def _check_token(self, message: AbstractIncomingMessage, worker_id: str) -> None:
        worker = self.state.pool.workers.get(worker_id)
        if worker is None:
            raise Refused(f"unknown worker {worker_id!r}")
        if not header_holds((message.headers or {}).get(TOKEN_HEADER), worker.token_hash):
            raise Refused(
                f"unauthorized: the {TOKEN_HEADER} header must hold worker {worker_id!r}'s token"
            )

    def _apply_one(
        self, task: TaskRow, report: Report, body: dict[str, Any], plan: ReportPlan
    ) -> str:
        worker_id = body["worker_id"]
        status = TaskStatus(task.status)
        repeated = repeated_outcome(status, report, worker_id, task.worker_id, task.rejected_by)
        if repeated is not None:
            if repeated.follow_up is not None:
                plan.follow_ups.append((task, repeated.follow_up))
            return "repeated"
        if task.worker_id != worker_id:
            raise Refused(f"task {task.id} is not assigned to worker {worker_id!r}")
        transition = next_state(
            status,
            report,
            task.attempt,
            task.max_attempts,
            task.rejections,
            self.state.settings.dispatch.max_rejections,
        )
        apply_transition(task, transition, report, worker_id, body.get("result"), body.get("error"))
        if transition.follow_up is not None:
            plan.follow_ups.append((task, transition.follow_up))
        return "applied"


async def publish_follow_up(state: LeaderState, task: TaskState, follow_up: FollowUp) -> None:
    """What a report that took ``task`` off its worker leaves to publish, once committed."""
    publisher = state.publisher
    body = assignments.intake_body(task)
    if follow_up is FollowUp.REQUEUE:
        await publisher.intake(body, task.priority)
    elif follow_up is FollowUp.RETRY:
        delays = state.settings.dispatch.retry_delays
        delay = delays[min(task.attempt - 2, len(delays) - 1)]
        await publisher.retry(retry_queue(delay).name, body, task.priority)
    else:
        if follow_up is FollowUp.REJECTED_OUT:
            reason, source = task.error or "rejected as often as allowed", "rejections"
        else:
            reason = f"attempts exhausted ({task.attempt} of {task.max_attempts}): {task.error}"
            source = "attempts"
        await publisher.dead_letter(
            _json_bytes(body), reason, REPORTS_QUEUE, routing_key="task.dead"
        )
        await publisher.event("task.dead", {"task_id": task.id, "error": task.error})
        state.metrics.dead_letters.labels(source=source).inc()


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, default=str).encode()
