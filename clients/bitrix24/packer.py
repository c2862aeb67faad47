"""Pack commands from every caller into full ``batch`` requests.

The portal counts HTTP requests, not commands, so the cheapest request is a full one. Callers
hand over their commands and wait; one sender loop takes a place in the leaky bucket first
and only then takes up to 50 waiting commands — while it waits for the bucket, commands from
other callers pile up and go in the same request. Several requests may be in flight (the
portal's latency would otherwise leave the bucket's allowance unused).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from clients.bitrix24.client import Bitrix24Client
from clients.bitrix24.commands import MAX_BATCH_COMMANDS, Command, CommandOutcome

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    command: Command
    future: asyncio.Future[CommandOutcome]


class CommandPacker:
    def __init__(
        self,
        client: Bitrix24Client,
        *,
        in_flight: int = 4,
        max_commands: int = MAX_BATCH_COMMANDS,
    ) -> None:
        if not 1 <= max_commands <= MAX_BATCH_COMMANDS:
            raise ValueError(f"a batch holds 1..{MAX_BATCH_COMMANDS} commands")
        self.client = client
        self.max_commands = max_commands
        self._slots = asyncio.Semaphore(in_flight)
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._send_loop(), name="bitrix24-packer")

    async def stop(self) -> None:
        """Stop after the requests in flight are answered; refuse what still waits."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        await asyncio.gather(*self._requests, return_exceptions=True)
        while self._waiting:
            item = self._waiting.popleft()
            item.future.cancel()

    async def execute(self, commands: Sequence[Command]) -> list[CommandOutcome]:
        """Run ``commands`` (in any requests, in any order between callers); outcomes in order."""
        if not commands:
            return []
        if self._loop_task is None:
            raise RuntimeError("the packer is not started")
        loop = asyncio.get_running_loop()
        items = [_Waiting(c, loop.create_future()) for c in commands]
        self._waiting.extend(items)
        self._arrived.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _send_loop(self) -> None:
        while True:
            await self._arrived.wait()
            await self._slots.acquire()
            try:
                await self.client.bucket.acquire()
            except BaseException:
                self._slots.release()
                raise
            chunk = [
                self._waiting.popleft() for _ in range(min(self.max_commands, len(self._waiting)))
            ]
            if not self._waiting:
                self._arrived.clear()
            task = asyncio.create_task(self._send(chunk))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _send(self, chunk: list[_Waiting]) -> None:
        try:
            outcomes = await self.client.batch([w.command for w in chunk], slot_taken=True)
        except Exception as error:
            for item in chunk:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            for item, outcome in zip(chunk, outcomes, strict=True):
                if not item.future.done():
                    item.future.set_result(outcome)
        finally:
            self._slots.release()
