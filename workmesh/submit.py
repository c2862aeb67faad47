"""Submitting tasks in bulk over AMQP (with a progress bar), and gathering stats."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from pydantic import ValidationError
from rich.progress import Progress

from rabbitmq.topology import INTAKE_QUEUE, SUBMIT_ROUTING_KEY, TASKS_EXCHANGE, TOKEN_HEADER
from schemas.tasks import TaskSubmit
from workmesh.settings import Settings


@dataclass
class SubmitReport:
    published: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


async def submit_lines(
    settings: Settings, token: str, lines: list[tuple[int, str]], window: int = 256
) -> SubmitReport:
    """Validate each line, then publish with confirms, ``window`` at a time."""
    report = SubmitReport()
    valid: list[TaskSubmit] = []
    for number, line in lines:
        try:
            valid.append(TaskSubmit.model_validate_json(line))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            report.rejected.append((number, f"{where}: {first['msg']}"))
    connection = await aio_pika.connect(settings.amqp.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(TASKS_EXCHANGE, ensure=True)
        with Progress() as progress:
            bar = progress.add_task("submitting", total=len(valid))
            for start in range(0, len(valid), window):
                group = valid[start : start + window]
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                task.model_dump_json(exclude_none=True).encode(),
                                content_type="application/json",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                priority=task.priority,
                                headers={TOKEN_HEADER: token},
                            ),
                            routing_key=SUBMIT_ROUTING_KEY,
                        )
                        for task in group
                    )
                )
                report.published += len(group)
                progress.update(bar, advance=len(group))
    return report


async def gather_stats(settings: Settings) -> dict[str, Any]:
    from workmesh.db import create_engine, session_factory
    from workmesh.services.counts import StatusCounts
    from workmesh.services.tasks import stats

    engine = create_engine(settings.database)
    try:
        async with session_factory(engine)() as session:
            result = await stats(session, StatusCounts())
    finally:
        await engine.dispose()
    connection = await aio_pika.connect(settings.amqp.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(INTAKE_QUEUE, passive=True)
        result["queues"] = {INTAKE_QUEUE: queue.declaration_result.message_count}
    plain: dict[str, Any] = json.loads(json.dumps(result, default=str))
    return plain
