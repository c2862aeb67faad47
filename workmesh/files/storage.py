"""Where file bytes live: a small interface, and the local-disk implementation.

Bytes always move as streams of pieces, so memory stays flat whatever the size. Objects are
named by string keys (``files/<id>``, ``results/<id>``). An object store fits the same shape:
``write_part`` is a multipart-upload part, ``seal`` completes the upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

PIECE = 256 * 1024  # bytes read or written per step


class Missing(Exception):
    """No object under that key."""


class Storage(Protocol):
    async def allocate(self, key: str, size: int) -> None:
        """Make room for an object of ``size`` bytes whose parts arrive in any order."""

    async def write_part(self, key: str, offset: int, pieces: AsyncIterator[bytes]) -> int:
        """Write ``pieces`` at ``offset``; returns the bytes written. A part written again
        replaces the bytes it covers."""

    async def seal(self, key: str) -> None:
        """Every part is there: the object is complete."""

    async def write(self, key: str, pieces: AsyncIterator[bytes]) -> int:
        """Write a whole object from a stream (replacing any); returns its size."""

    def read(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (to the end when None) from ``start``."""

    async def sha256(self, key: str) -> str:
        """The hex SHA-256 of the object, computed by streaming it."""

    async def delete(self, key: str) -> None: ...


class LocalDiskStorage:
    """Files under one directory. Disk calls run in threads so the event loop never waits."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"storage key {key!r} leaves the storage directory")
        return path

    async def allocate(self, key: str, size: int) -> None:
        path = self._path(key)

        def make() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.truncate(size)  # sparse where the file system allows

        await asyncio.to_thread(make)

    async def write_part(self, key: str, offset: int, pieces: AsyncIterator[bytes]) -> int:
        path = self._path(key)
        f = await asyncio.to_thread(open, path, "r+b")
        try:
            await asyncio.to_thread(f.seek, offset)
            return await _pour(pieces, f)
        finally:
            await asyncio.to_thread(f.close)

    async def seal(self, key: str) -> None:
        # Parts were written in place; flush them to the disk before saying "stored".
        path = self._path(key)

        def sync() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(sync)

    async def write(self, key: str, pieces: AsyncIterator[bytes]) -> int:
        path = self._path(key)
        partial = path.with_name(path.name + ".partial")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        f = await asyncio.to_thread(open, partial, "wb")
        try:
            size = await _pour(pieces, f)
        except BaseException:
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        await asyncio.to_thread(f.close)
        await asyncio.to_thread(os.replace, partial, path)
        return size

    async def read(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise Missing(key) from None
        try:
            await asyncio.to_thread(f.seek, start)
            left = length
            while left is None or left > 0:
                piece = await asyncio.to_thread(f.read, PIECE if left is None else min(PIECE, left))
                if not piece:
                    return
                if left is not None:
                    left -= len(piece)
                yield piece
        finally:
            await asyncio.to_thread(f.close)

    async def sha256(self, key: str) -> str:
        path = self._path(key)

        def digest() -> str:
            hasher = hashlib.sha256()
            with open(path, "rb") as f:
                while piece := f.read(1024 * 1024):
                    hasher.update(piece)
            return hasher.hexdigest()

        try:
            return await asyncio.to_thread(digest)
        except FileNotFoundError:
            raise Missing(key) from None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)


async def _pour(pieces: AsyncIterator[bytes], f: BinaryIO) -> int:
    written = 0
    async for piece in pieces:
        await asyncio.to_thread(f.write, piece)
        written += len(piece)
    await asyncio.to_thread(f.flush)
    return written
