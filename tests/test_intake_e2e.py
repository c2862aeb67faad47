"""The intake's channels on the real RabbitMQ: a turn's one multiple-ack per channel never
covers a message the doorbell delivered late and the turn did not take.

Seen in bench/dispatch.py: the doorbell consumed on a channel the turns also used for
basic.get. A message it delivered just before its cancel landed was kept for the next turn;
the current turn's multiple-ack then acknowledged it unprocessed, and the next turn's own ack
of it closed the channel ("unknown delivery tag"), failing the leader's term.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import aio_pika

from rabbitmq.topology import INTAKE_QUEUE
from tests.conftest import eventually
from workmesh.engine.intake import Intake, IntakePlan
from workmesh.engine.state import LeaderState


def leader_state() -> LeaderState:
    # Only what taking and settling without assignments reads.
    state: Any = SimpleNamespace(
        settings=SimpleNamespace(security=SimpleNamespace(admin_token="t")),
        metrics=SimpleNamespace(batch_size=SimpleNamespace(observe=lambda _: None)),
        publisher=None,  # nothing assigned: nothing published
    )
    return cast(LeaderState, state)


async def test_a_late_doorbell_delivery_is_not_acknowledged_by_the_turn_that_missed_it(
    amqp_url: str,
) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        setup = await connection.channel()
        queue = await setup.declare_queue(INTAKE_QUEUE, durable=True)
        for n in range(2):
            await setup.default_exchange.publish(
                aio_pika.Message(f"task {n}".encode()), routing_key=INTAKE_QUEUE
            )
        intake = await Intake.open(connection, leader_state())

        # The doorbell rings with the first message, which the turn does not see yet (in
        # the leader it arrives while the turn's basic.gets are on their way).
        tag = await intake.listen()
        await eventually(lambda: bool(intake._rung), message="the doorbell rang")
        late, intake._rung = intake._rung, []
        taken = await intake.take(1)
        assert [m.body for m in taken] == [b"task 1"]
        intake._rung = late
        await intake.settle(taken, IntakePlan())
        await intake.stop_listening(tag)

        # The next turn takes and settles it; every channel stays open.
        again = await intake.take(1)
        assert [m.body for m in again] == [b"task 0"]
        await intake.settle(again, IntakePlan())
        await asyncio.sleep(0.2)  # a channel error comes back asynchronously
        for asker in (*intake.queues, intake.queue):
            # A round trip on each channel: raises if RabbitMQ closed it.
            await asker.channel.declare_queue(INTAKE_QUEUE, durable=True, passive=True)
        assert await queue.get(fail=False) is None
    finally:
        await connection.close()
