"""What the HTTP API publishes to RabbitMQ, through the FastStream broker (with confirms)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from faststream.rabbit import RabbitBroker, RabbitExchange, RabbitQueue

from models import Task
from rabbitmq.topology import (
    EVENTS_EXCHANGE,
    ORIGIN_HEADER,
    SUBMIT_ROUTING_KEY,
    TASKS_EXCHANGE,
    TOKEN_HEADER,
    worker_queue,
    worker_queue_name,
)
from schemas.tasks import StatusChange
from workmesh.dispatch.lifecycle import Report
from workmesh.services.assignments import intake_body

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs

TASKS = RabbitExchange(TASKS_EXCHANGE, declare=False)
EVENTS = RabbitExchange(EVENTS_EXCHANGE, declare=False)


class ApiBus:
    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker

    async def submit(self, task: Task, token: str) -> None:
        await self.broker.publish(
            intake_body(task),
            exchange=TASKS,
            routing_key=SUBMIT_ROUTING_KEY,
            priority=task.priority,
            persist=True,
            headers={TOKEN_HEADER: token, ORIGIN_HEADER: "api"},
        )

    async def report(
        self, task: Task, report: Report, worker_id: str, token: str, change: StatusChange
    ) -> None:
        body: dict[str, Any] = {"task_id": task.id, "worker_id": worker_id}
        if change.result is not None:
            body["result"] = change.result
        if change.error is not None:
            body["error"] = change.error
        await self.broker.publish(
            body,
            exchange=EVENTS,
            routing_key=f"task.{report.value}",
            persist=True,
            headers={TOKEN_HEADER: token, ORIGIN_HEADER: "api"},
        )

    async def cancelled(self, task_id: str, worker_id: str) -> None:
        await self.broker.publish(
            {"task_id": task_id},
            queue=worker_queue_name(worker_id),
            message_type="cancel",
            priority=9,
            persist=True,
        )
        await self.broker.publish(
            {"task_id": task_id, "worker_id": worker_id},
            exchange=EVENTS,
            routing_key="task.cancelled",
            persist=True,
            headers={ORIGIN_HEADER: "api"},
        )

    async def declare_worker_queue(self, worker_id: str) -> None:
        """So that a new worker can start consuming at once, before the dispatcher's review."""
        await self.broker.declare_queue(
            RabbitQueue(
                worker_queue(worker_id).name,
                durable=True,
                arguments=cast("ClassicQueueArgs", worker_queue(worker_id).arguments),
            )
        )


BUS = web.AppKey("bus", ApiBus)
