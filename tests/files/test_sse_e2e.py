"""Server-sent events: status changes and the current download URL, resumable by event id."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN, Harness
from tests.files.helpers import KiB, fetch, parser_token, start, upload


async def read_events(
    response: aiohttp.ClientResponse, until: str, limit: int = 50
) -> list[dict[str, Any]]:
    """Parse SSE frames until an event of kind ``until`` has arrived."""
    events: list[dict[str, Any]] = []
    frame: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line:
            field, _, value = line.partition(": ")
            frame[field] = value
            continue
        if "event" in frame:
            events.append(
                {"id": int(frame["id"]), "event": frame["event"], **json.loads(frame["data"])}
            )
            if frame["event"] == until or len(events) >= limit:
                return events
        frame = {}
    return events


def stream(harness: Harness, file_id: str, last: int | None = None) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    return harness.http.get(f"{harness.base}/api/v1/files/{file_id}/events", headers=headers)


@pytest.mark.e2e
async def test_sse_streams_urls_and_statuses_and_resumes_from_last_event_id(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path, refer_interval=0.3, refer_lifetime=60)
    view = await upload(harness, os.urandom(8 * KiB))
    file_id = view["id"]

    # The stream replays the file's history, then follows the renewals as they happen.
    async with stream(harness, file_id) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await read_events(response, until="refer.renewed")
    kinds = [e["event"] for e in first]
    assert kinds[:2] == ["stored", "refer.issued"]
    assert first[1]["url"] == view["refer"]["url"]
    renewed = first[-1]
    assert renewed["url"].endswith(renewed["refer"])
    assert [e["id"] for e in first] == sorted(e["id"] for e in first)

    # A reconnecting client gets only what came after its last event id, first what it missed.
    token = await parser_token(harness)
    async with stream(harness, file_id, last=renewed["id"]) as response:
        later = await read_events(response, until="refer.renewed")
        assert all(e["id"] > renewed["id"] for e in later)
        assert later[0]["generation"] == renewed["generation"] + 1
        # A status change arrives live on the open stream.
        current = later[-1]["refer"]
        status, _ = await fetch(harness, current, token)
        assert status == 200
        live = await read_events(response, until="status")
    assert live[-1]["status"] == "processing"
    assert any(e["event"] == "refer.stopped" and e["reason"] == "downloaded" for e in live)


@pytest.mark.e2e
async def test_sse_refuses_bad_requests(harness: Harness, tmp_path: Path) -> None:
    await start(harness, tmp_path)
    view = await upload(harness, b"x" * 100, chunk_size=50)
    status, body = await harness.api("GET", f"/api/v1/files/{view['id']}/events", token=None)
    assert status == 401
    status, body = await harness.api(
        "GET", f"/api/v1/files/{view['id']}/events", headers={"Last-Event-ID": "abc"}
    )
    assert status == 400
    assert "Last-Event-ID" in body["error"]
    status, body = await harness.api("GET", "/api/v1/files/nope/events")
    assert status == 404


@pytest.mark.e2e
async def test_an_open_stream_ends_when_the_mesh_stops(harness: Harness, tmp_path: Path) -> None:
    await start(harness, tmp_path, sse_keepalive=60)
    view = await upload(harness, b"y" * 10, chunk_size=5)
    async with stream(harness, view["id"]) as response:
        await read_events(response, until="refer.issued")
        # When the mesh stops, the stream is closed by the server (it does not hold the
        # shutdown until the keep-alive or the client gives up).
        mesh = harness.meshes.pop(0)
        stopping = asyncio.ensure_future(mesh.stop())
        rest = await asyncio.wait_for(response.content.read(), timeout=20)
        await asyncio.wait_for(stopping, timeout=20)
    assert b"event:" not in rest
