"""The intake's channels on the real RabbitMQ: a turn's one multiple-ack per channel never
covers a message the doorbell delivered late and the turn did not take; the doorbell spares
basic.gets that would find the queue empty; stopped, it gives back what it holds, so waiting
tasks keep their priority order in RabbitMQ.

Seen in bench/dispatch.py: the doorbell consumed on a channel the turns also used for
basic.get. A message it delivered just before its cancel landed was kept for the next turn;
the current turn's multiple-ack then acknowledged it unprocessed, and the next turn's own ack
of it closed the channel ("unknown delivery tag"), failing the leader's term.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractChannel

from rabbitmq.topology import INTAKE_QUEUE, MAX_PRIORITY
from tests.conftest import eventually
from workmesh.engine.intake import Intake, IntakePlan
from workmesh.engine.state import LeaderState


@contextlib.asynccontextmanager
async def intake_on(
    amqp_url: str, arguments: dict[str, Any] | None = None
) -> AsyncIterator[tuple[AbstractChannel, Intake]]:
    """The intake queue declared on a fresh connection, and the leader's view of it."""
    connection = await aio_pika.connect(amqp_url)
    try:
        setup = await connection.channel()
        await setup.declare_queue(INTAKE_QUEUE, durable=True, arguments=arguments)
        yield setup, await Intake.open(connection, leader_state())
    finally:
        await connection.close()


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
        await intake.listen(room=1)
        await eventually(lambda: bool(intake._rung), message="the doorbell rang")
        late, intake._rung = intake._rung, []
        taken = await intake.take(1)
        assert [m.body for m in taken] == [b"task 1"]
        intake._rung = late
        await intake.settle(taken, IntakePlan())
        await intake.stop_listening()  # gives "task 0" back to the queue

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


class CountedGets:
    """An intake channel's queue that counts its basic.gets."""

    def __init__(self, queue: Any) -> None:
        self.queue, self.channel, self.gets = queue, queue.channel, 0

    async def get(self, **kwargs: Any) -> Any:
        self.gets += 1
        return await self.queue.get(**kwargs)


async def test_a_listening_doorbell_spares_the_basic_gets_that_would_find_nothing(
    amqp_url: str,
) -> None:
    async with intake_on(amqp_url) as (setup, intake):
        counted = [CountedGets(queue) for queue in intake.queues]
        intake.queues = cast(Any, counted)

        # Not listening: the turn must ask RabbitMQ.
        assert await intake.take(4) == []
        assert sum(c.gets for c in counted) > 0
        asked = sum(c.gets for c in counted)

        # Listening with room for more deliveries: nothing delivered means nothing queued.
        await intake.listen(room=4)
        assert intake.known_empty()
        assert await intake.take(4) == []
        assert sum(c.gets for c in counted) == asked

        # A task that arrives rings the doorbell and is taken without a basic.get.
        await setup.default_exchange.publish(aio_pika.Message(b"task 0"), routing_key=INTAKE_QUEUE)
        await eventually(intake.doorbell.is_set, message="the doorbell rang")
        taken = await intake.take(4)
        assert [m.body for m in taken] == [b"task 0"]
        assert sum(c.gets for c in counted) == asked
        await intake.settle(taken, IntakePlan())
        assert intake.known_empty()


async def test_a_full_doorbell_does_not_vouch_for_an_empty_queue(amqp_url: str) -> None:
    """With as many deliveries outstanding as its prefetch, RabbitMQ holds the rest back, so
    the turn must ask for them."""
    async with intake_on(amqp_url) as (setup, intake):
        await intake.listen(room=1)  # a prefetch of one
        for n in range(3):
            await setup.default_exchange.publish(
                aio_pika.Message(f"task {n}".encode()), routing_key=INTAKE_QUEUE
            )
        await eventually(intake.doorbell.is_set, message="the doorbell rang")
        assert not intake.known_empty()
        taken = await intake.take(3)
        assert sorted(m.body for m in taken) == [b"task 0", b"task 1", b"task 2"]
        await intake.settle(taken, IntakePlan())


async def test_a_stopped_doorbell_gives_back_what_it_held_in_priority_order(
    amqp_url: str,
) -> None:
    """The workers filled up while the doorbell held two tasks: they go back to RabbitMQ, and
    a higher-priority task that arrives later still goes first, the two in their old order."""
    async with intake_on(amqp_url, {"x-max-priority": MAX_PRIORITY}) as (setup, intake):
        await intake.listen(room=2)
        for n in range(2):
            await setup.default_exchange.publish(
                aio_pika.Message(f"low {n}".encode(), priority=0), routing_key=INTAKE_QUEUE
            )
        await eventually(lambda: len(intake._rung) == 2, message="the doorbell held two")

        await intake.stop_listening()
        assert not intake.doorbell.is_set()
        assert not intake.listening
        await setup.default_exchange.publish(
            aio_pika.Message(b"high", priority=9), routing_key=INTAKE_QUEUE
        )
        await asyncio.sleep(0.1)  # a delivery after the cancel would show up here
        assert intake._rung == []

        order = []
        for _ in range(3):  # one slot at a time, as room frees up
            taken = await intake.take(1)
            order += [m.body for m in taken]
            await intake.settle(taken, IntakePlan())
        assert order == [b"high", b"low 0", b"low 1"]


async def test_a_doorbell_whose_deliveries_are_all_unsettled_is_started_again(
    amqp_url: str,
) -> None:
    """Its prefetch used up by turns still waiting for their confirms, the doorbell cannot
    ring: RabbitMQ holds the next task back until they settle. Listening again starts a new
    consumer, whose window is its own, so the task arrives at once."""
    async with intake_on(amqp_url) as (setup, intake):
        await intake.listen(room=1)  # a prefetch of one
        await setup.default_exchange.publish(aio_pika.Message(b"first"), routing_key=INTAKE_QUEUE)
        await eventually(intake.doorbell.is_set, message="the doorbell rang")
        first = await intake.take(1, rung_only=True)  # its turn has not settled yet

        await setup.default_exchange.publish(aio_pika.Message(b"second"), routing_key=INTAKE_QUEUE)
        await asyncio.sleep(0.2)
        assert not intake.doorbell.is_set()  # held back by RabbitMQ

        await intake.listen(room=1)
        await eventually(intake.doorbell.is_set, message="the new doorbell rang")
        second = await intake.take(1, rung_only=True)
        assert [m.body for m in first + second] == [b"first", b"second"]
        await intake.settle(first, IntakePlan())
        await intake.settle(second, IntakePlan())
        assert intake.known_empty()
        await asyncio.sleep(0.2)  # a channel error comes back asynchronously
        await intake.queue.channel.declare_queue(INTAKE_QUEUE, durable=True, passive=True)
