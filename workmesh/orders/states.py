"""The per-order sync states and the transition table, as data.

``TABLE`` is the one place the rules live: the receiver applies it to every snapshot that
arrives from the peer, docs/sync.md prints it (``markdown_table()``), and the tests walk every
row. A combination that is not in it is an error: the order goes to ERROR and the error is
sent to the peer.

Rows come from the seed (../shared/seeds/two-way-order-sync.md) unless ``seed`` is False;
docs/sync.md says why each added or changed row exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class State(IntEnum):
    NEW = 1
    UPD = 2
    OK = 3
    DEL = 4
    DEL_SYNCED = 5
    COLLISION = 6
    ERROR = 7
    ERROR_SYNCED = 8
    SYNC = 9  # listed by the seed, used by no transition


# A side in one of these has told the peer something and waits for its answer; the resend
# sweep sends it again when the answer is late (the seed's "*" cases).
WAITING = frozenset({State.NEW, State.UPD, State.DEL, State.ERROR})
# Snapshots that only acknowledge what the peer sent.
ACKS = frozenset({State.OK, State.DEL_SYNCED})
# Flagged orders: only a resolve call (POST .../resolve) takes them out.
FLAGGED = frozenset({State.COLLISION, State.ERROR, State.ERROR_SYNCED})


class Adopt(StrEnum):
    """What the receiver does with the order body that came with the snapshot."""

    TAKE = "take"  # it becomes the local order (a new, changed or deleted order arrived)
    KEEP_THEIRS = "keep_theirs"  # kept beside the local one as the peer's version
    NONE = "none"  # only the state matters (an acknowledgement)


@dataclass(frozen=True)
class Row:
    received: State
    was: State | None  # None: the order is not here; ANY: see ``ANY``
    becomes: State
    send_back: bool  # the seed's "+": the resulting state goes back to the peer
    adopt: Adopt
    note: str
    repeat: bool = False  # the seed's "*": arises when a sync is repeated after a lost link
    seed: bool = True  # False: added by workmesh (docs/sync.md says why)
    any_was: bool = False  # the seed's "any" in the "was" column


S = State
TABLE: tuple[Row, ...] = (
    Row(S.NEW, S.NEW, S.COLLISION, True, Adopt.KEEP_THEIRS, "uuid collision"),
    Row(S.NEW, S.OK, S.OK, True, Adopt.TAKE, "creation repeated", repeat=True),
    Row(S.NEW, S.COLLISION, S.COLLISION, True, Adopt.KEEP_THEIRS, "collision repeated",
        repeat=True),
    Row(S.NEW, None, S.OK, True, Adopt.TAKE, "a new order arrived"),
    Row(S.UPD, S.UPD, S.COLLISION, True, Adopt.KEEP_THEIRS, "collision update/update"),
    Row(S.UPD, S.OK, S.OK, True, Adopt.TAKE, "a changed order arrived"),
    Row(S.UPD, S.DEL, S.COLLISION, True, Adopt.KEEP_THEIRS, "collision update/delete"),
    Row(S.UPD, S.COLLISION, S.COLLISION, True, Adopt.KEEP_THEIRS, "collision repeated",
        repeat=True),
    Row(S.OK, S.NEW, S.OK, False, Adopt.NONE, "creation synced"),
    Row(S.OK, S.UPD, S.OK, False, Adopt.NONE, "update synced"),
    Row(S.DEL, S.UPD, S.COLLISION, True, Adopt.KEEP_THEIRS, "collision delete/update"),
    Row(S.DEL, S.OK, S.DEL_SYNCED, True, Adopt.TAKE, "a deleted order arrived"),
    # The seed: COLLISION. Both sides want the order gone; there is nothing to choose.
    Row(S.DEL, S.DEL, S.DEL_SYNCED, True, Adopt.TAKE, "deleted on both sides", seed=False),
    Row(S.DEL, S.DEL_SYNCED, S.DEL_SYNCED, True, Adopt.NONE, "deletion repeated",
        repeat=True),
    Row(S.DEL, S.COLLISION, S.COLLISION, True, Adopt.KEEP_THEIRS, "collision repeated",
        repeat=True),
    # A deletion of an order whose creation never reached us (created and deleted while the
    # link was down): keep the tombstone.
    Row(S.DEL, None, S.DEL_SYNCED, True, Adopt.TAKE, "a deleted order we never saw",
        seed=False),
    Row(S.DEL_SYNCED, S.DEL, S.DEL_SYNCED, False, Adopt.NONE, "deletion synced"),
    # Both sides deleted and each answered the other's DEL: the two answers cross.
    Row(S.DEL_SYNCED, S.DEL_SYNCED, S.DEL_SYNCED, False, Adopt.NONE,
        "both deletions synced", seed=False),
    Row(S.COLLISION, S.NEW, S.COLLISION, False, Adopt.KEEP_THEIRS, "collision synced"),
    Row(S.COLLISION, S.UPD, S.COLLISION, False, Adopt.KEEP_THEIRS, "collision synced"),
    Row(S.COLLISION, S.DEL, S.COLLISION, False, Adopt.KEEP_THEIRS, "collision synced"),
    Row(S.COLLISION, S.COLLISION, S.COLLISION, False, Adopt.KEEP_THEIRS,
        "collision repeated", repeat=True),
    Row(S.ERROR, None, S.ERROR_SYNCED, True, Adopt.KEEP_THEIRS, "an error arrived",
        any_was=True),
    Row(S.ERROR_SYNCED, S.ERROR, S.ERROR_SYNCED, False, Adopt.NONE, "error synced"),
    # Both sides found an error at once and each answered the other's ERROR.
    Row(S.ERROR_SYNCED, S.ERROR_SYNCED, S.ERROR_SYNCED, False, Adopt.NONE,
        "both errors synced", seed=False),
)  # fmt: skip


class Unlisted(Exception):
    """A (received, was) combination the table does not list."""

    def __init__(self, received: State, was: State | None) -> None:
        self.received, self.was = received, was
        shown = was.name if was is not None else "absent"
        super().__init__(f"no transition for {received.name} received while {shown}")


def transition(received: State, was: State | None) -> Row:
    for row in TABLE:
        if row.received is received and (row.any_was or row.was is was):
            return row
    raise Unlisted(received, was)


def _check_table() -> None:
    """One row per (received, was): a second one would be dead and hide a mistake."""
    seen: set[tuple[State, State | None, bool]] = set()
    for row in TABLE:
        key = (row.received, row.was, row.any_was)
        if key in seen:
            raise AssertionError(f"two rows for {key}")
        seen.add(key)


_check_table()


def markdown_table() -> str:
    """The table as docs/sync.md shows it."""
    lines = [
        "| received | was | becomes | send back | body | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in TABLE:
        was = "any" if row.any_was else (row.was.name if row.was is not None else "(absent)")
        note = row.note + (" *" if row.repeat else "") + ("" if row.seed else " (workmesh)")
        lines.append(
            f"| {row.received.name} | {was} | {row.becomes.name} | "
            f"{'+' if row.send_back else '−'} | {row.adopt.value} | {note} |"
        )
    return "\n".join(lines)
