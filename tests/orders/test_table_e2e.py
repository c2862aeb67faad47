"""Every row of the transition table, through a real instance: the order is brought into the
row's "was" state, the peer's snapshot arrives over HTTP, and the order must end in the row's
state — and its snapshot must reach the peer (a fake here) exactly when the row says "+"."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import eventually
from tests.orders.conftest import FakePeer, Instance, facing_fake_peer
from workmesh.orders.states import TABLE, State, transition

ORDER: dict[str, Any] = {"customer": "Anna", "status": "new", "items": [], "note": ""}
THEIRS: dict[str, Any] = {**ORDER, "note": "the peer's version"}

# The seed's table, as its text has it (../shared/seeds/two-way-order-sync.md), so that a
# change of TABLE that departs from the seed fails here unless it is marked seed=False.
SEED = """
NEW NEW COLLISION + | NEW OK OK + | NEW COLLISION COLLISION + | NEW - OK +
UPD UPD COLLISION + | UPD OK OK + | UPD DEL COLLISION + | UPD COLLISION COLLISION +
OK NEW OK - | OK UPD OK - | DEL UPD COLLISION + | DEL OK DEL_SYNCED +
DEL DEL COLLISION + | DEL DEL_SYNCED DEL_SYNCED + | DEL COLLISION COLLISION +
DEL_SYNCED DEL DEL_SYNCED - | COLLISION NEW COLLISION - | COLLISION UPD COLLISION -
COLLISION DEL COLLISION - | COLLISION COLLISION COLLISION - | ERROR * ERROR_SYNCED +
ERROR_SYNCED ERROR ERROR_SYNCED -
"""


def test_the_table_keeps_the_seed_rows_and_marks_every_departure() -> None:
    seed = {}
    for cell in SEED.replace("\n", " | ").split("|"):
        if cell.strip():
            received, was, becomes, sync = cell.split()
            seed[(received, was)] = (becomes, sync == "+")
    ours = {}
    for row in TABLE:
        was = "*" if row.any_was else (row.was.name if row.was else "-")
        ours[(row.received.name, was)] = (row.becomes.name, row.send_back, row.seed)
    for key, (becomes, send_back) in seed.items():
        assert key in ours, f"the seed's row {key} is missing"
        if ours[key][2]:
            assert ours[key][:2] == (becomes, send_back), key
        else:  # a departure, documented in docs/sync.md
            assert ours[key][:2] != (becomes, send_back), key
    for key, (_, _, from_seed) in ours.items():
        assert from_seed == (key in seed and ours[key][:2] == seed[key]), key
    assert transition(State.ERROR, State.OK).becomes is State.ERROR_SYNCED


class Walk:
    """One instance under test ("A") and a fake peer ("P") that plays the other side."""

    def __init__(self, instance: Instance, peer: FakePeer) -> None:
        self.a, self.peer = instance, peer
        self.revs: dict[str, int] = defaultdict(int)

    async def receive(
        self, order_id: str, state: State, *, ack: int = 0, body: dict[str, Any] | None = None,
        deleted: bool = False, error: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self.revs[order_id] += 1
        snap = {"state": int(state), "rev": self.revs[order_id], "ack": ack, "epoch": 0,
                "origin": "P", "sender": "P", "body": body or THEIRS, "deleted": deleted,
                "error": error}  # fmt: skip
        status, answer = await self.a.api("PUT", f"/api/v1/orders/{order_id}/sync", json=snap)
        assert status == 200, answer
        return dict(answer)

    async def drained(self, order_id: str) -> dict[str, Any]:
        """Wait until the order's current snapshot has reached the peer (if it must)."""
        holder: dict[str, Any] = {}

        async def delivered() -> bool:
            order = await self.a.order(order_id)
            holder["order"] = order
            return not order["pending"] and (
                order["sync_state"] not in ("NEW", "UPD", "DEL", "ERROR")
                or any(s["rev"] == order["rev"] for s in self.peer.sent(order_id))
            )

        await eventually(delivered, message=f"order {order_id} delivered")
        return dict(holder["order"])

    async def flush(self) -> None:
        """With one sync queue, a new order reaching the peer means every send before it
        has been made."""
        _, marker = await self.a.api("POST", "/api/v1/orders", json=ORDER)
        await eventually(lambda: bool(self.peer.sent(marker["id"])), message="marker sent")

    async def prepare(self, was: State | None) -> str:
        order_id = str(uuid.uuid4())
        if was is None:
            return order_id
        if was in (State.NEW, State.COLLISION):
            await self.a.api("POST", "/api/v1/orders", json={**ORDER, "id": order_id})
            if was is State.COLLISION:
                await self.receive(order_id, State.NEW)
        elif was is State.ERROR:
            await self.receive(order_id, State.OK)  # an acknowledgement of nothing
        elif was is State.ERROR_SYNCED:
            await self.receive(order_id, State.ERROR, error="broken over there")
        else:
            await self.receive(order_id, State.NEW)  # now OK
            if was is State.UPD:
                await self.a.api("PUT", f"/api/v1/orders/{order_id}", json=ORDER)
            elif was is State.DEL:
                await self.a.api("DELETE", f"/api/v1/orders/{order_id}")
            elif was is State.DEL_SYNCED:
                await self.receive(order_id, State.DEL, deleted=True)
        order = await self.drained(order_id)
        assert order["sync_state"] == was.name, order
        return order_id


@pytest.fixture
async def walk(amqp_url: str, database_url: str) -> AsyncIterator[Walk]:
    # One sync queue (sends in order), and no resend during the walk.
    quiet = {"shards": 1, "resend_after": 600.0}
    async with facing_fake_peer(amqp_url, database_url, **quiet) as (instance, peer):
        yield Walk(instance, peer)


SETTLED_STATES = [s for s in State if s is not State.SYNC]


async def test_every_row(walk: Walk) -> None:
    cases = []
    for row in TABLE:
        for was in [None, *SETTLED_STATES] if row.any_was else [row.was]:
            cases.append((row, was))
    for row, was in cases:
        label = f"{row.received.name} while {was.name if was else 'absent'}"
        order_id = await walk.prepare(was)
        before = await walk.a.order(order_id) if was is not None else None
        sent_before = len(walk.peer.sent(order_id))
        answer = await walk.receive(
            order_id, row.received,
            ack=before["rev"] if before and row.received in (State.OK, State.DEL_SYNCED) else 0,
            deleted=row.received in (State.DEL, State.DEL_SYNCED), error="e",
        )  # fmt: skip
        assert (answer["outcome"], answer["state"]) == ("applied", row.becomes.name), label
        assert answer["send_back"] is row.send_back, label
        after = await walk.a.order(order_id)
        assert after["sync_state"] == row.becomes.name, label
        if row.becomes is State.COLLISION:
            assert after["theirs"] is not None, label
        if row.send_back:
            rev, state = after["rev"], int(row.becomes)
            await eventually(
                lambda: any(
                    s["rev"] == rev and s["state"] == state  # noqa: B023
                    for s in walk.peer.sent(order_id)  # noqa: B023
                ),
                message=f"{label}: the result sent back",
            )
        else:
            await walk.flush()
            assert len(walk.peer.sent(order_id)) == sent_before, label


async def test_unlisted_combinations_are_errors_sent_to_the_peer(walk: Walk) -> None:
    for received, was in [(State.OK, State.OK), (State.UPD, None), (State.DEL_SYNCED, State.OK),
                          (State.NEW, State.DEL_SYNCED)]:  # fmt: skip
        order_id = await walk.prepare(was)
        answer = await walk.receive(order_id, received, ack=99)
        assert (answer["outcome"], answer["state"]) == ("error", "ERROR"), (received, was)
        order = await walk.a.order(order_id)
        assert order["error"].startswith(f"no transition for {received.name}")
        await eventually(
            lambda: any(
                s["state"] == int(State.ERROR) and s["error"]
                for s in walk.peer.sent(order_id)  # noqa: B023
            ),
            message="the error sent to the peer",
        )


async def test_old_and_repeated_snapshots_change_nothing(walk: Walk) -> None:
    order_id = await walk.prepare(State.OK)
    rev = (await walk.a.order(order_id))["rev"]
    # The same acknowledgement twice, and an older revision after a newer one.
    walk.revs[order_id] += 5
    first = await walk.receive(order_id, State.UPD, body={**ORDER, "note": "newer"})
    assert first["outcome"] == "applied"
    walk.revs[order_id] -= 3
    older = await walk.receive(order_id, State.UPD, body={**ORDER, "note": "older"})
    assert older["outcome"] == "stale"
    assert (await walk.a.order(order_id))["body"]["note"] == "newer"
    assert rev < (await walk.a.order(order_id))["rev"]


async def test_an_answer_to_an_older_revision_does_not_acknowledge_a_newer_one(
    walk: Walk,
) -> None:
    order_id = await walk.prepare(State.UPD)
    order = await walk.a.order(order_id)
    await walk.a.api("PUT", f"/api/v1/orders/{order_id}", json={**ORDER, "note": "again"})
    answer = await walk.receive(order_id, State.OK, ack=order["rev"])
    assert answer["outcome"] == "outdated-ack"
    assert (await walk.a.order(order_id))["sync_state"] == "UPD"
    newest = (await walk.a.order(order_id))["rev"]
    assert (await walk.receive(order_id, State.OK, ack=newest))["state"] == "OK"


async def test_a_change_of_the_peer_carries_the_lost_acknowledgement(walk: Walk) -> None:
    order_id = await walk.prepare(State.NEW)
    order = await walk.a.order(order_id)
    # The peer took our NEW (its OK was lost), then changed the order: UPD acking our rev.
    answer = await walk.receive(order_id, State.UPD, ack=order["rev"],
                                body={**ORDER, "note": "changed there"})  # fmt: skip
    assert (answer["outcome"], answer["state"]) == ("applied", "OK")
    assert (await walk.a.order(order_id))["body"]["note"] == "changed there"


def test_the_docs_show_the_table_of_the_code() -> None:
    from pathlib import Path

    from workmesh.orders.states import markdown_table

    docs = (Path(__file__).resolve().parents[2] / "docs" / "sync.md").read_text()
    assert markdown_table() in docs, "docs/sync.md: paste markdown_table() again"
