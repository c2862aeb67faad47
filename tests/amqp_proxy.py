"""A TCP proxy in front of RabbitMQ that makes publisher confirms late, as a slow disk does.

RabbitMQ confirms a persistent message once it is on disk (or consumed), so where the disk
syncs slowly, confirms come late while deliveries do not. The proxy passes every frame through
at once except the server's ``basic.ack`` and ``basic.nack`` frames (and every later frame on a
channel that carried one, so a channel's frames stay in order): those it sends ``delay``
seconds late, and not at all while it holds them.

    proxy = ConfirmProxy("127.0.0.1", 5672, delay=0.1)
    port = await proxy.start()   # connect to amqp://...@127.0.0.1:<port>/vhost
    proxy.hold(); ...; proxy.release()

Used by tests/test_slow_confirms_e2e.py, and by bench/dispatch.py --confirm-delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Coroutine
from typing import Any

FRAME_METHOD = 1
BASIC_CLASS = 60
BASIC_ACK, BASIC_NACK = 80, 120


class ConfirmProxy:
    def __init__(self, upstream_host: str, upstream_port: int, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.held_confirms = 0  # confirms that arrived while held
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        """Listen on a local port (a free one by default); returns it."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        return int(self._server.sockets[0].getsockname()[1])

    def hold(self) -> None:
        """Keep confirms back from now on, until ``release``."""
        self._flowing.clear()

    def release(self) -> None:
        """Send what was held, in the order it came (after its delay), and stop holding."""
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        lane: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._spawn(self._upstream(client_r, server_w))
        self._spawn(self._downstream(server_r, client_w, lane))
        self._spawn(self._confirm_lane(lane, client_w))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server: bytes as they come."""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _downstream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        lane: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        """Server to client, frame by frame: confirm channels' frames go to the lane."""
        loop = asyncio.get_running_loop()
        confirm_channels: set[int] = set()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(7)
                kind, channel, size = struct.unpack(">BHI", header)
                frame = header + await reader.readexactly(size + 1)
                if _is_confirm(kind, frame):
                    confirm_channels.add(channel)
                    self.held_confirms += not self._flowing.is_set()
                if channel in confirm_channels:
                    lane.put_nowait((loop.time() + self.delay, frame))
                    continue
                writer.write(frame)
                await writer.drain()
        writer.close()

    async def _confirm_lane(
        self, lane: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, frame = await lane.get()
            await self._flowing.wait()
            if (pause := due - loop.time()) > 0:
                await asyncio.sleep(pause)
            if not writer.is_closing():
                writer.write(frame)


def _is_confirm(kind: int, frame: bytes) -> bool:
    if kind != FRAME_METHOD:
        return False
    class_id, method_id = struct.unpack(">HH", frame[7:11])
    return class_id == BASIC_CLASS and method_id in (BASIC_ACK, BASIC_NACK)
