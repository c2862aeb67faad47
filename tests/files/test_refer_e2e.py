"""Refer keys end to end: issued on store and announced, renewed by the delayed-message chain
(also across a restart of the mesh), stopped by the parser's download or the time limit,
restarted on request; downloads by key with Range and the downloader limit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Harness, eventually
from tests.files.helpers import EventTap, KiB, MiB, fetch, parser_token, sha, start, upload


async def file_view(harness: Harness, file_id: str) -> dict[str, object]:
    status, view = await harness.api("GET", f"/api/v1/files/{file_id}")
    assert status == 200, view
    return dict(view)


@pytest.mark.e2e
async def test_stored_file_gets_a_key_that_is_announced_and_downloads(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path)
    data = os.urandom(300 * KiB + 17)
    async with EventTap(harness.amqp_url) as tap:
        view = await upload(harness, data)
        file_id = str(view["id"])
        stored = await tap.wait_for(file_id, "stored")
        issued = await tap.wait_for(file_id, "refer.issued")
    assert stored[0]["sha256"] == sha(data)
    assert stored[0]["routing_key"] == "file.stored"
    refer = view["refer"]
    assert isinstance(refer, dict)
    assert issued[0]["refer"] == refer["key"]
    assert issued[0]["url"] == refer["url"]

    # Whole, then a range, then a suffix range: the key alone authorises a download.
    status, body = await fetch(harness, refer["key"])
    assert status == 200
    assert body == data
    async with harness.http.get(refer["url"]) as resp:
        assert resp.status == 200
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert await resp.read() == data
    async with harness.http.get(refer["url"], headers={"Range": "bytes=1000-1999"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        assert await resp.read() == data[1000:2000]
    async with harness.http.get(refer["url"], headers={"Range": "bytes=-10"}) as resp:
        assert resp.status == 206
        assert await resp.read() == data[-10:]
    async with harness.http.get(refer["url"], headers={"Range": f"bytes={len(data)}-"}) as resp:
        assert resp.status == 416
        assert "past the end" in (await resp.json())["error"]
    # A user's download (no parser token) leaves the file as it was.
    assert (await file_view(harness, file_id))["status"] == "none"


@pytest.mark.e2e
async def test_key_rotates_on_schedule_across_a_restart_of_the_mesh(
    harness: Harness, tmp_path: Path
) -> None:
    # Given a short interval, a file stored, and its first renewal observed
    await start(harness, tmp_path, refer_interval=0.4, refer_lifetime=120)
    view = await upload(harness, os.urandom(10 * KiB))
    file_id = str(view["id"])
    first = view["refer"]
    assert isinstance(first, dict)

    async def generation_at_least(n: int) -> bool:
        refer = (await file_view(harness, file_id))["refer"]
        assert isinstance(refer, dict)
        return int(refer["generation"]) >= n

    await eventually(lambda: generation_at_least(2), message="the first renewal")
    # The replaced key stops working, with a reason.
    status, body = await fetch(harness, first["key"], None)
    assert status == 410
    assert "replaced" in body["error"]

    # When the mesh stops for longer than several intervals and a new one starts
    old = harness.meshes.pop(0)
    await old.stop()
    before = await _generation_in_db(harness, file_id)
    await asyncio.sleep(1.2)  # renewals come due while no mesh runs
    assert await _generation_in_db(harness, file_id) == before
    await start(harness, tmp_path, refer_interval=0.4, refer_lifetime=120)

    # Then the chain, kept in RabbitMQ, goes on renewing, and the current key works.
    await eventually(lambda: generation_at_least(before + 2), message="renewals after restart")
    refer = (await file_view(harness, file_id))["refer"]
    assert isinstance(refer, dict)
    status, _ = await fetch(harness, refer["key"], None)
    assert status == 200


async def _generation_in_db(harness: Harness, file_id: str) -> int:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    from models.files import StoredFile

    engine = create_async_engine(harness.database_url)
    try:
        async with engine.connect() as connection:
            value = await connection.scalar(
                select(StoredFile.refer_generation).where(StoredFile.id == file_id)
            )
            return int(value or 0)
    finally:
        await engine.dispose()


@pytest.mark.e2e
async def test_parser_download_stops_renewal_and_marks_processing(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path, refer_interval=0.3, refer_lifetime=120)
    token = await parser_token(harness)
    async with EventTap(harness.amqp_url) as tap:
        view = await upload(harness, os.urandom(20 * KiB))
        file_id = str(view["id"])
        await tap.wait_for(file_id, "refer.renewed")
        refer = (await file_view(harness, file_id))["refer"]
        assert isinstance(refer, dict)

        # A HEAD from the parser downloads nothing and changes nothing.
        async with harness.http.head(
            refer["url"], headers={"Authorization": f"Bearer {token}"}
        ) as head:
            assert head.status == 200
            assert head.headers["Content-Length"] == str(20 * KiB)
        assert (await file_view(harness, file_id))["status"] == "none"

        # When the parser (a worker token) starts downloading with the current key
        status, _ = await fetch(harness, refer["key"], token)
        assert status == 200
        stopped = await tap.wait_for(file_id, "refer.stopped")
        statuses = await tap.wait_for(file_id, "status")
        assert stopped[0]["reason"] == "downloaded"
        assert statuses[0]["status"] == "processing"
        renewed = len(tap.of(file_id, "refer.renewed"))
        # Then no renewal follows, however long we wait (several intervals), and the key works.
        await asyncio.sleep(1.0)
        assert len(tap.of(file_id, "refer.renewed")) == renewed
    after = await file_view(harness, file_id)
    assert after["status"] == "processing"
    assert isinstance(after["refer"], dict)
    assert after["refer"]["key"] == refer["key"]
    assert after["refer"]["renewal_stopped"] == "downloaded"
    status, _ = await fetch(harness, refer["key"], None)
    assert status == 200


@pytest.mark.e2e
async def test_renewal_stops_at_the_time_limit_and_the_key_expires_until_restarted(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path, refer_interval=0.3, refer_lifetime=1.0)
    async with EventTap(harness.amqp_url) as tap:
        view = await upload(harness, os.urandom(4 * KiB))
        file_id = str(view["id"])
        stopped = await tap.wait_for(file_id, "refer.stopped")
        assert stopped[0]["reason"] == "time limit"
        renewals = tap.of(file_id, "refer.renewed")
        # Renewed each interval within the lifetime, then no more.
        assert 1 <= len(renewals) <= 3
        assert all(r["expires_at"] == view["refer"]["expires_at"] for r in renewals)
    refer = (await file_view(harness, file_id))["refer"]
    assert isinstance(refer, dict)
    assert refer["renewal_stopped"] == "time limit"
    status, body = await fetch(harness, refer["key"], None)
    assert status == 410
    assert "expired" in body["error"]
    assert f"/api/v1/files/{file_id}/refer" in body["error"]

    # A restart on request issues a new key that works, and renews again.
    status, restarted = await harness.api("POST", f"/api/v1/files/{file_id}/refer")
    assert status == 201, restarted
    assert restarted["key"] != refer["key"]
    assert restarted["generation"] == refer["generation"] + 1
    status, _ = await fetch(harness, restarted["key"], None)
    assert status == 200
    status, body = await fetch(harness, refer["key"], None)
    assert status == 410
    assert "replaced" in body["error"]


@pytest.mark.e2e
async def test_unknown_key_is_refused(harness: Harness, tmp_path: Path) -> None:
    await start(harness, tmp_path)
    status, body = await fetch(harness, "no-such-key")
    assert status == 404
    assert body["error"] == "unknown refer key"


@pytest.mark.e2e
async def test_the_eleventh_concurrent_downloader_is_refused(
    harness: Harness, tmp_path: Path
) -> None:
    # A file big enough that a client which reads nothing holds its download open.
    await start(harness, tmp_path, max_downloaders=10)
    data = os.urandom(48 * MiB)
    view = await upload(harness, data, chunk_size=8 * MiB)
    url = view["refer"]["url"]
    held: list[aiohttp.ClientResponse] = []
    try:
        for _ in range(10):
            response = await harness.http.get(url)
            assert response.status == 200
            held.append(response)
        async with harness.http.get(url) as eleventh:
            assert eleventh.status == 429
            assert "10 downloads" in (await eleventh.json())["error"]
            assert eleventh.headers["Retry-After"]
    finally:
        for response in held:
            response.close()

    # When the held downloads are gone, a new one is served again.
    async def served() -> bool:
        async with harness.http.get(url, headers={"Range": "bytes=0-9"}) as resp:
            return resp.status == 206

    await eventually(served, message="a download after the others ended")
