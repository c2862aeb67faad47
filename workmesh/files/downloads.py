"""At most N concurrent downloads of one file, counted in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class TooManyDownloaders(Exception):
    pass


class DownloadLimiter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: dict[str, int] = {}

    def active(self, file_id: str) -> int:
        return self._active.get(file_id, 0)

    @contextmanager
    def slot(self, file_id: str) -> Iterator[None]:
        if self.active(file_id) >= self.limit:
            raise TooManyDownloaders(file_id)
        self._active[file_id] = self.active(file_id) + 1
        try:
            yield
        finally:
            left = self._active[file_id] - 1
            if left:
                self._active[file_id] = left
            else:
                del self._active[file_id]
