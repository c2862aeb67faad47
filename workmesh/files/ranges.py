"""HTTP ``Range: bytes=...`` for one range (RFC 9110 §14), as a pure function."""

from __future__ import annotations

from dataclasses import dataclass


class BadRange(Exception):
    """The range is malformed or outside the file: answer 416 with this text."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range asked for, or None for the whole file (no header)."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        raise BadRange(f"only 'Range: bytes=<start>-<end>' is served, not {header!r}")
    if "," in spec:
        raise BadRange("only one range per request is served; ask for each range separately")
    first, dash, last = spec.strip().partition("-")
    if not dash:
        raise BadRange(f"malformed range {header!r}")
    try:
        if first == "":  # the last N bytes
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise BadRange(f"range {header!r} selects nothing of a {size}-byte file")
            return ByteRange(max(0, size - suffix), size - 1)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        raise BadRange(f"malformed range {header!r}") from None
    if start < 0 or end < 0:
        raise BadRange(f"malformed range {header!r}")
    if start >= size:
        raise BadRange(f"range {header!r} starts past the end of a {size}-byte file")
    if end < start:
        raise BadRange(f"malformed range {header!r}: it ends before it starts")
    return ByteRange(start, min(end, size - 1))
