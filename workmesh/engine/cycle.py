"""The leader's cycle: the workers' reports and the intake queue, in one transaction.

Each turn takes every report that has arrived, works out how much room they free, pulls that
many tasks off the intake queue (one basic.get each, so the rest wait in RabbitMQ in priority
order), reads every task they name at once, plans, and writes all the changes in one
transaction (workmesh/engine/store.py). Only once the commit is on disk are the assignments and
follow-ups published (with confirms) and the messages acknowledged. Under load a turn gathers
more, so the cost of a commit and of a round of confirms is shared by more tasks; when idle it
waits for a report, for room, or for the doorbell (a consumer on the intake queue that stays on
while there is room, workmesh/engine/intake.py) instead of polling.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aio_pika.abc import AbstractIncomingMessage

from models.base import utcnow
from workmesh.engine.intake import Intake, IntakePlan
from workmesh.engine.reports import ReportApplier, ReportPlan
from workmesh.engine.state import LeaderState, with_fresh_state

log = logging.getLogger(__name__)

# Messages (intake and reports) whose turns have committed but not yet settled; past this
# the cycle waits for turns to settle before it takes another. Counted in messages, not
# turns: at a steady rate a turn holds a task or two, and a cap of a few turns made a
# confirm that came late (a slow disk) stop dispatch until it came.
MAX_UNSETTLED_MESSAGES = 2048
# How long reports alone may wait for a task to share a turn with, when no one needs the room
# they free (seconds). Status reads lag by at most this much; dispatch does not.
REPORT_LINGER = 0.02


class LeaderCycle:
    def __init__(self, state: LeaderState, intake: Intake, reports: ReportApplier) -> None:
        self.state = state
        self.intake = intake
        self.reports = reports
        self._finishing: asyncio.Task[None] | None = None
        self._unsettled = 0  # messages
        self._settled = asyncio.Event()  # set whenever a turn settles
        self._failure: BaseException | None = None
        self._woken_by_doorbell = False
        self._deferred = False

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # The term is over: no more deliveries, and what the doorbell holds goes back.
            self.state.track(self.intake.stop_listening()).add_done_callback(_seen)

    async def _run(self) -> None:
        state = self.state
        while True:
            if self._failure is not None:
                raise self._failure
            reports = self.reports.drain()
            room = state.pool.free_capacity() + self.reports.expected_room(reports)
            want = min(room, state.settings.dispatch.batch_size)
            tasks = await self.intake.take(want, rung_only=self._woken_by_doorbell)
            self._woken_by_doorbell = False
            if not reports and not tasks:
                await self._wait(room)
                continue
            if not tasks and self._may_defer(reports):
                # Reports alone, and nobody waits for the room they free: hold them a moment
                # so they share the next task's turn (and its commit) instead of taking one.
                self.reports.put_back(reports)
                await self._wait(room, linger=REPORT_LINGER, on_reports=False)
                self._deferred = True
                continue
            self._deferred = False
            # A publisher confirm for a persistent message waits for RabbitMQ's disk, which
            # takes longer than a whole turn here; so the next turn starts once this one has
            # committed, while its confirms come in, and turns settle (acknowledge) strictly
            # in order. The turn is a task of its own: stopping the cycle lets it finish.
            committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            previous = self._finishing
            self._finishing = state.track(self._turn(reports, tasks, previous, committed))
            self._finishing.add_done_callback(self._turn_ended)
            self._unsettled += len(reports) + len(tasks)
            await asyncio.shield(committed)
            while self._unsettled >= MAX_UNSETTLED_MESSAGES and self._failure is None:
                self._settled.clear()
                await self._settled.wait()

    async def _turn(
        self,
        reports: list[AbstractIncomingMessage],
        tasks: list[AbstractIncomingMessage],
        previous: asyncio.Task[None] | None,
        committed: asyncio.Future[None],
    ) -> None:
        started = time.perf_counter()
        try:
            plans = await self._commit(reports, tasks)
        except BaseException as error:
            committed.set_exception(error)
            raise
        committed.set_result(None)
        await self._finish(reports, tasks, *plans, previous, started)

    def _turn_ended(self, turn: asyncio.Task[None]) -> None:
        """A turn that failed after its commit (a publish refused, the channel gone) ends
        the leader's term at once, rather than when a later turn happens to look."""
        if not turn.cancelled() and turn.exception() is not None and self._failure is None:
            self._failure = turn.exception()
            self.state.room.set()
            self._settled.set()

    async def _commit(
        self, reports: list[AbstractIncomingMessage], tasks: list[AbstractIncomingMessage]
    ) -> tuple[ReportPlan, IntakePlan]:
        state = self.state

        task_ids, keys = self.intake.wanted_rows(tasks)
        task_ids |= self.reports.wanted_rows(reports)

        async def plan() -> tuple[ReportPlan, IntakePlan]:
            # One read serves the whole turn, reports and new tasks alike; one transaction
            # writes what they changed. The plan in between runs here, on the loop.
            await self.intake.know_submitters(tasks)
            known = await state.store.read(task_ids, keys)
            now = utcnow()
            report_plan = self.reports.plan(reports, known)
            self.reports.release(report_plan)
            intake_plan = self.intake.plan(tasks, known, now)
            changed = report_plan.changed | {row.id: row for row in intake_plan.changed}
            await state.store.write(intake_plan.new_rows, list(changed.values()), now)
            return report_plan, intake_plan

        async with state.lock:
            plans = await with_fresh_state(state, plan)
            state.room.set()
        return plans

    async def _finish(
        self,
        reports: list[AbstractIncomingMessage],
        tasks: list[AbstractIncomingMessage],
        report_plan: ReportPlan,
        intake_plan: IntakePlan,
        previous: asyncio.Task[None] | None,
        started: float,
    ) -> None:
        """Once the commit is on disk: publish, then settle, in the order the turns were taken."""
        await self.state.store.durable()
        publishing = time.perf_counter()
        await asyncio.gather(self.reports.publish(report_plan), self.intake.publish(intake_plan))
        if intake_plan.assigned or report_plan.follow_ups:
            # RabbitMQ confirms a persistent message once it is on disk: a slow disk shows here.
            self.state.metrics.confirm_wait.observe(time.perf_counter() - publishing)
        if previous is not None:
            await previous  # a multiple-ack must not overtake an earlier turn's publishes
        await self.reports.settle(reports)
        await self.intake.settle(tasks, intake_plan)
        self._unsettled -= len(reports) + len(tasks)
        self._settled.set()
        elapsed = time.perf_counter() - started
        for _ in intake_plan.assigned:
            self.state.metrics.dispatch_latency.observe(elapsed)

    def _may_defer(self, reports: list[AbstractIncomingMessage]) -> bool:
        return (
            not self._deferred
            and len(reports) < self.state.settings.dispatch.batch_size
            and self.state.pool.free_capacity() > 0
        )

    async def _wait(self, room: int, linger: float | None = None, on_reports: bool = True) -> None:
        """Until a report arrives, the pool changes, (with room) a task arrives, or the
        linger passes."""
        if self._failure is not None:
            return
        state = self.state
        state.room.clear()
        # Shielded: an AMQP call cancelled half way closes its channel (aiormq), and a
        # stopping cycle can as well let a consume or a cancel finish.
        if room > 0:
            await asyncio.shield(self.intake.listen(room))
        elif state.pool.free_capacity() > 0:
            return  # room appeared (the review engaged a reserve) since the turn looked
        else:
            await asyncio.shield(self.intake.stop_listening())
        waits = [asyncio.ensure_future(state.room.wait())]
        if on_reports:
            waits.append(asyncio.ensure_future(self.reports.arrived.wait()))
        if self.intake.listening:
            waits.append(asyncio.ensure_future(self.intake.doorbell.wait()))
        try:
            await asyncio.wait(waits, timeout=linger, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            self._woken_by_doorbell = self.intake.doorbell.is_set()


def _seen(future: asyncio.Future[None]) -> None:
    """Mark a failure as retrieved: stopping the doorbell at the end of a term fails when the
    connection is gone, which is already what ended the term."""
    if not future.cancelled():
        future.exception()
