"""File statuses, comment severities and the moves between statuses."""

from __future__ import annotations

from enum import StrEnum


class FileStatus(StrEnum):
    NONE = "none"  # stored (or still arriving), nobody is analysing it yet
    PROCESSING = "processing"  # the parser has started downloading it
    READY = "ready"  # the analysis result has been uploaded
    ERROR = "error"  # the upload or the analysis failed; ``error`` says why
    DB_READY = "db_ready"  # the merged recommendation is in the database


class Severity(StrEnum):
    NONE = "none"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


SEVERITY_ORDER = [Severity.NONE, Severity.MILD, Severity.MODERATE, Severity.SEVERE]

# Forward only; ``error`` from anywhere (and back to processing to analyse again).
_MOVES: dict[FileStatus, frozenset[FileStatus]] = {
    FileStatus.NONE: frozenset({FileStatus.PROCESSING, FileStatus.READY, FileStatus.ERROR}),
    FileStatus.PROCESSING: frozenset({FileStatus.READY, FileStatus.ERROR}),
    FileStatus.READY: frozenset({FileStatus.DB_READY, FileStatus.READY, FileStatus.ERROR}),
    FileStatus.DB_READY: frozenset({FileStatus.DB_READY, FileStatus.ERROR}),
    FileStatus.ERROR: frozenset({FileStatus.PROCESSING, FileStatus.ERROR}),
}


def may_move(current: FileStatus, new: FileStatus) -> bool:
    return new in _MOVES[current]


def worst(severities: list[Severity]) -> Severity:
    """The merged severity: the gravest any comment gave."""
    return max(severities, key=SEVERITY_ORDER.index, default=Severity.NONE)
