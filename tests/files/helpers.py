"""Shared bits of the files tests: settings, an upload client, an event listener."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika

from tests.conftest import Harness, eventually
from workmesh.files.capability import FilesCapability
from workmesh.files.settings import FilesSettings

KiB = 1024
MiB = 1024 * KiB


def settings(tmp_path: Path, **overrides: Any) -> FilesSettings:
    values: dict[str, Any] = {
        "directory": tmp_path / "files",
        "chunk_size": 256 * KiB,
        "min_chunk_size": 1,
        "refer_interval": 60.0,
        "refer_lifetime": 600.0,
        "sse_keepalive": 1.0,
        # Short intervals in tests; batching renewals for CPU is the bench's business.
        "rotation_linger": 0.02,
    }
    return FilesSettings(**{**values, **overrides})


async def start(harness: Harness, tmp_path: Path, **overrides: Any) -> FilesCapability:
    capability = FilesCapability(settings(tmp_path, **overrides))
    await harness.start("files", capabilities=[capability])
    return capability


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put_chunk(harness: Harness, file_id: str, index: int, data: bytes, **kw: Any) -> Any:
    headers = {"X-Chunk-Sha256": kw.pop("digest", sha(data))}
    return await harness.api(
        "PUT", f"/api/v1/files/{file_id}/chunks/{index}", data=data, headers=headers, **kw
    )


async def upload(harness: Harness, data: bytes, chunk_size: int = 64 * KiB) -> dict[str, Any]:
    """Upload ``data`` whole (small files) and complete it; returns the file's view."""
    status, created = await harness.api(
        "POST",
        "/api/v1/files",
        json={"name": "clip.mp4", "size": len(data), "sha256": sha(data), "chunk_size": chunk_size},
    )
    assert status == 201, created
    for index in range(created["chunks"]):
        part = data[index * chunk_size : (index + 1) * chunk_size]
        status, body = await put_chunk(harness, created["id"], index, part)
        assert status == 201, body
    status, view = await harness.api("POST", f"/api/v1/files/{created['id']}/complete")
    assert status == 200, view
    return dict(view)


class EventTap:
    """Every ``file.#`` event published on workmesh.events, as the analysis side sees it."""

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self.events: list[dict[str, Any]] = []
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> EventTap:
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(
            "workmesh.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "file.#")

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            body = json.loads(message.body)
            body["routing_key"] = message.routing_key
            self.events.append(body)

        await queue.consume(take, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._connection is not None
        await self._connection.close()

    def of(self, file_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["file_id"] == file_id and kind in (None, e["kind"])]

    async def wait_for(
        self, file_id: str, kind: str, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        await eventually(
            lambda: len(self.of(file_id, kind)) >= count,
            timeout=timeout,
            message=f"{count} {kind} event(s) of {file_id}",
        )
        return self.of(file_id, kind)


async def generated(size: int, seed: int = 1, piece: int = 256 * KiB) -> AsyncIterator[bytes]:
    """``size`` deterministic bytes in pieces, never all in memory."""
    for offset in range(0, size, piece):
        yield pattern(offset, min(piece, size - offset), seed)


def pattern(offset: int, length: int, seed: int = 1) -> bytes:
    # Cheap and position-dependent, so a chunk written at the wrong offset changes the hash.
    block = hashlib.sha256(f"{seed}:{offset // (256 * KiB)}".encode()).digest()
    start = offset % (256 * KiB)
    reps = (start + length) // len(block) + 1
    return (block * reps)[start : start + length]


def stream_sha(size: int, seed: int = 1) -> str:
    hasher = hashlib.sha256()
    for offset in range(0, size, 256 * KiB):
        hasher.update(pattern(offset, min(256 * KiB, size - offset), seed))
    return hasher.hexdigest()


async def fetch(
    harness: Harness, key: str, token: str | None = None, **headers: str
) -> tuple[int, Any]:
    """Download by refer key: (status, bytes) when served, (status, JSON error) when not."""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with harness.http.get(f"{harness.base}/files/download/{key}", headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.read()


async def parser_token(harness: Harness, worker_id: str = "parser-1") -> str:
    """A worker's token: what the parser (the analysis side) downloads with."""
    from schemas.workers import WorkerCreate
    from workmesh.services.workers import create_worker

    async with harness.meshes[0].sessions() as session, session.begin():
        return await create_worker(session, WorkerCreate(id=worker_id))
