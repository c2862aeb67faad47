"""Chunked, resumable upload end to end: parallel chunks, a broken connection and a resume
that sends only what is missing, memory bounded; and every bad chunk refused with a reason."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN, Harness
from tests.files.helpers import KiB, MiB, pattern, put_chunk, sha, start, stream_sha, upload

SIZE = 200 * MiB
CHUNK = 16 * MiB
PARALLEL = 4
BROKEN = 7  # the chunk whose connection breaks half-way


class Broken(Exception):
    pass


def chunk_pieces(index: int, size: int, break_at: int | None = None) -> AsyncIterator[bytes]:
    async def pieces() -> AsyncIterator[bytes]:
        start = index * CHUNK
        length = min(CHUNK, size - start)
        for offset in range(0, length, 256 * KiB):
            if break_at is not None and offset >= break_at:
                raise Broken
            yield pattern(start + offset, min(256 * KiB, length - offset))

    return pieces()


def chunk_sha(index: int, size: int) -> str:
    hasher = hashlib.sha256()
    start = index * CHUNK
    length = min(CHUNK, size - start)
    for offset in range(0, length, 256 * KiB):
        hasher.update(pattern(start + offset, min(256 * KiB, length - offset)))
    return hasher.hexdigest()


async def send(http: aiohttp.ClientSession, base: str, file_id: str, index: int, **kw: Any) -> int:
    async with http.put(
        f"{base}/api/v1/files/{file_id}/chunks/{index}",
        data=chunk_pieces(index, SIZE, kw.get("break_at")),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Chunk-Sha256": kw["digest"]},
    ) as resp:
        return resp.status


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_200mb_in_parallel_chunks_survives_a_break_and_resumes_with_flat_memory(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path, chunk_size=CHUNK)
    digests = [chunk_sha(i, SIZE) for i in range(-(-SIZE // CHUNK))]
    whole = stream_sha(SIZE)
    status, created = await harness.api(
        "POST", "/api/v1/files", json={"name": "big.bin", "size": SIZE, "sha256": whole}
    )
    assert status == 201, created
    file_id, chunks = created["id"], created["chunks"]
    assert chunks == len(digests) == 13  # the last one shorter
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]

        # Given a first pass of parallel chunks that ends when one chunk's connection breaks
        sent_whole: set[int] = set()
        queue = list(range(chunks))

        async def first_pass_worker() -> None:
            while queue:
                index = queue.pop(0)
                if index == BROKEN:
                    with pytest.raises((Broken, aiohttp.ClientError)):
                        await send(
                            harness.http,
                            harness.base,
                            file_id,
                            index,
                            digest=digests[index],
                            break_at=CHUNK // 2,
                        )
                    queue.clear()  # the link is down: the client stops sending
                    return
                assert (
                    await send(harness.http, harness.base, file_id, index, digest=digests[index])
                    == 201
                )
                sent_whole.add(index)

        await asyncio.gather(*(first_pass_worker() for _ in range(PARALLEL)))
        assert BROKEN not in sent_whole
        assert len(sent_whole) < chunks

        # When the client asks what arrived and sends only the rest, in parallel
        status, view = await harness.api("GET", f"/api/v1/files/{file_id}")
        assert status == 200
        missing = view["missing"]
        assert set(missing) == set(range(chunks)) - sent_whole
        assert BROKEN in missing
        resent = list(missing)

        async def resume_worker() -> None:
            while resent:
                index = resent.pop(0)
                assert (
                    await send(harness.http, harness.base, file_id, index, digest=digests[index])
                    == 201
                )

        await asyncio.gather(*(resume_worker() for _ in range(PARALLEL)))
        status, done = await harness.api("POST", f"/api/v1/files/{file_id}/complete")
        assert status == 200, done
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    # Then the file is whole, and neither side ever held even one chunk in memory.
    assert done["stored_at"] is not None
    assert done["received"] == chunks
    assert peak < CHUNK, f"peak Python memory grew by {peak / MiB:.1f} MiB during the upload"
    stored = tmp_path / "files" / "files" / file_id
    assert stored.stat().st_size == SIZE
    # The stored bytes are the sent bytes: a range from the middle of the once-broken chunk.
    async with harness.http.get(
        done["refer"]["url"], headers={"Range": f"bytes={BROKEN * CHUNK + 5}-{BROKEN * CHUNK + 99}"}
    ) as resp:
        assert resp.status == 206
        assert await resp.read() == pattern(BROKEN * CHUNK + 5, 95)
    shutil.rmtree(tmp_path / "files")  # 200 MB is too much to leave to pytest's tmp dirs


@pytest.mark.e2e
async def test_bad_chunks_and_a_wrong_whole_file_hash_get_clear_errors(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path)
    data = os.urandom(100 * KiB)
    status, created = await harness.api(
        "POST",
        "/api/v1/files",
        json={"name": "a.bin", "size": len(data), "sha256": sha(data), "chunk_size": 64 * KiB},
    )
    assert status == 201
    file_id = created["id"]
    first, second = data[: 64 * KiB], data[64 * KiB :]

    # A chunk whose bytes do not match its hash
    status, body = await put_chunk(harness, file_id, 0, first, digest=sha(b"other"))
    assert status == 422
    assert "chunk 0 is damaged" in body["error"]
    # A chunk of the wrong size, a chunk out of range, a chunk without or with a bad hash
    status, body = await put_chunk(harness, file_id, 0, first[:-1])
    assert status == 400
    assert f"must be {64 * KiB} bytes" in body["error"]
    status, body = await put_chunk(harness, file_id, 2, second)
    assert status == 404
    assert "out of range" in body["error"]
    status, body = await harness.api("PUT", f"/api/v1/files/{file_id}/chunks/0", data=first)
    assert status == 400
    assert "X-Chunk-Sha256" in body["error"]
    status, body = await put_chunk(harness, file_id, 0, first, digest="xyz")
    assert status == 400
    # Completing early names what is missing
    status, body = await harness.api("POST", f"/api/v1/files/{file_id}/complete")
    assert status == 409
    assert body["missing"] == [0, 1]
    # A chunk sent twice is accepted once; sent again with other bytes it is refused.
    assert (await put_chunk(harness, file_id, 0, first))[0] == 201
    status, body = await put_chunk(harness, file_id, 0, first)
    assert (status, body["already_had_it"]) == (200, True)
    status, body = await put_chunk(harness, file_id, 0, os.urandom(64 * KiB))
    assert status == 409
    # Uploads need a producer or admin token
    status, body = await put_chunk(harness, file_id, 1, second, token=None)
    assert status == 401

    # Every chunk right but the declared whole-file hash wrong: the upload is void.
    status, created = await harness.api(
        "POST",
        "/api/v1/files",
        json={"name": "b.bin", "size": len(data), "sha256": sha(b"not it"), "chunk_size": 64 * KiB},
    )
    bad = created["id"]
    assert (await put_chunk(harness, bad, 0, first))[0] == 201
    assert (await put_chunk(harness, bad, 1, second))[0] == 201
    status, body = await harness.api("POST", f"/api/v1/files/{bad}/complete")
    assert status == 422
    assert f"the file's sha256 is {sha(data)}" in body["error"]
    status, view = await harness.api("GET", f"/api/v1/files/{bad}")
    assert (view["status"], view["refer"]) == ("error", None)


@pytest.mark.e2e
async def test_malformed_upload_requests_are_refused(harness: Harness, tmp_path: Path) -> None:
    await start(harness, tmp_path, max_file_size=1000)
    status, body = await harness.api("POST", "/api/v1/files", data=b"{nope")
    assert status == 400
    assert "malformed JSON" in body["error"]
    status, body = await harness.api("POST", "/api/v1/files", json={"name": "x", "size": 5})
    assert status == 422
    assert body["details"][0]["field"] == "sha256"
    status, body = await harness.api(
        "POST", "/api/v1/files", json={"name": "x", "size": 5000, "sha256": "0" * 64}
    )
    assert status == 413
    status, body = await harness.api("GET", "/api/v1/files/nope")
    assert status == 404
    producer = await harness.producer_token()
    view = await upload(harness, b"hello world", chunk_size=4)  # completes with the admin token
    status, again = await harness.api(
        "POST", f"/api/v1/files/{view['id']}/complete", token=producer
    )
    assert status == 200
    assert again["refer"]["key"] == view["refer"]["key"]  # completing twice changes nothing
