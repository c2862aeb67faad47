"""``receive_many`` (one lock statement for a batch) leaves every order exactly as ``receive``
one snapshot at a time does, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from schemas.orders import OrderBody, OrderCreate, Snapshot
from workmesh.db import create_engine, session_factory
from workmesh.orders import service
from workmesh.orders.states import State
from workmesh.settings import DatabaseSettings

BODY = {"customer": "Ivan Petrov", "note": ""}
COLUMNS = ("body", "deleted", "origin", "sync_state", "rev", "peer_rev", "epoch", "theirs",
           "error", "outbox")  # fmt: skip


def snap(state: State, rev: int, ack: int = 0, note: str = "") -> Snapshot:
    return Snapshot(
        state=int(state), rev=rev, ack=ack, epoch=0, origin="B", sender="B",
        body=OrderBody.model_validate({**BODY, "note": note}),
    )  # fmt: skip


async def test_a_batch_ends_as_one_snapshot_at_a_time_does(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    sessions = session_factory(engine)
    try:
        # Two copies of the same story, one per way of applying it: an order of ours not
        # yet acknowledged, one the peer created and then changed in the same batch, an
        # acknowledgement of an order never here (unlisted: ERROR), and an old repeat.
        async with sessions() as session, session.begin():
            for copy in ("one", "many"):
                await service.create(
                    session, OrderCreate.model_validate({**BODY, "id": uuid_of(copy, 1)}), "A"
                )
        story = [
            (1, snap(State.OK, rev=1, ack=1)),
            (2, snap(State.NEW, rev=1, note="first")),
            (2, snap(State.UPD, rev=2, ack=1, note="second")),
            (3, snap(State.OK, rev=1)),
            (2, snap(State.NEW, rev=1, note="first")),
        ]
        one: list[Any] = []
        async with sessions() as session, session.begin():
            for n, item in story:
                one.append(await service.receive(session, uuid_of("one", n), item))
        async with sessions() as session, session.begin():
            many = await service.receive_many(
                session, [(uuid_of("many", n), item) for n, item in story]
            )

        assert many == one
        assert [r.outcome for r in many] == ["applied", "applied", "applied", "error", "stale"]
        async with sessions() as session:
            for n in (1, 2, 3):
                a = await service.get(session, uuid_of("one", n))
                b = await service.get(session, uuid_of("many", n))
                assert [getattr(b, c) for c in COLUMNS] == [getattr(a, c) for c in COLUMNS], n
    finally:
        await engine.dispose()


def uuid_of(copy: str, n: int) -> str:
    # Ids sort the same way in both copies, as the batch applies them.
    return f"{'0' if copy == 'one' else '1'}0000000-0000-4000-8000-00000000000{n}"
