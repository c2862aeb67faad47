"""What a poll of a marketplace feed returns: events, and the entries it could not read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.stock import MarketplaceEvent


@dataclass
class FeedPage:
    events: list[MarketplaceEvent] = field(default_factory=list)
    # One line per entry that was malformed or meant nothing to us: reported, then skipped.
    problems: list[str] = field(default_factory=list)

    def add(self, entry: MarketplaceEvent | str) -> None:
        if isinstance(entry, str):
            self.problems.append(entry)
        else:
            self.events.append(entry)


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, as the marketplaces write it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
