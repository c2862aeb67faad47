"""Server-sent events of one file, from its event log, resumable by event id."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy import select

from models.files import FileEvent

if TYPE_CHECKING:
    from workmesh.files.runtime import FilesRuntime

PAGE = 500


async def stream_events(
    request: web.Request, rt: FilesRuntime, file_id: str, after: int
) -> web.StreamResponse:
    """Send every event after ``after``, then each new one as it is announced."""
    assert rt.notifier is not None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx would buffer the stream otherwise
        }
    )
    await response.prepare(request)
    closing = asyncio.ensure_future(rt.closing.wait())
    try:
        async with rt.notifier.listen(file_id) as wake:
            # The retry hint: how soon a browser's EventSource reconnects.
            await response.write(b"retry: 2000\n\n")
            while not rt.closing.is_set():
                wake.clear()  # before reading, so an event committed meanwhile wakes us
                async with rt.sessions() as session:
                    rows = (
                        (
                            await session.execute(
                                select(FileEvent)
                                .where(FileEvent.file_id == file_id, FileEvent.id > after)
                                .order_by(FileEvent.id)
                                .limit(PAGE)
                            )
                        )
                        .scalars()
                        .all()
                    )
                for row in rows:
                    data = json.dumps({"event_id": row.id, "file_id": file_id, **row.data})
                    await response.write(
                        f"id: {row.id}\nevent: {row.kind}\ndata: {data}\n\n".encode()
                    )
                    after = row.id
                if len(rows) == PAGE:
                    continue
                woken = asyncio.ensure_future(wake.wait())
                done, _ = await asyncio.wait(
                    {woken, closing},
                    timeout=rt.settings.sse_keepalive,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
                if not done:
                    await response.write(b": keep-alive\n\n")
    except ConnectionResetError:
        pass
    finally:
        closing.cancel()
        with contextlib.suppress(Exception):
            await response.write_eof()
    return response
