"""Answers carried in a batch's response (``"answers": true``): the receiver puts its answer
to each "+" row in the result instead of sending it back on its own, and the sender applies
it. Through real RabbitMQ, one real instance and a fake peer in the other's place."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import eventually
from tests.orders.conftest import FakePeer, Instance, facing_fake_peer
from tests.orders.test_api_e2e import ORDER, alone, snapshot_from_b
from workmesh.orders.states import State

__all__ = ["alone"]  # the fixture, used below


async def test_a_batch_asking_for_answers_gets_them_and_does_not_send_them_again(
    alone: Instance,
) -> None:
    asked, unasked = str(uuid.uuid4()), str(uuid.uuid4())
    # When B sends a new order asking for answers, and another without asking
    status, body = await alone.api(
        "POST", "/api/v1/orders/sync",
        json={"snapshots": [snapshot_from_b(asked, state=1, rev=1)], "answers": True},
    )  # fmt: skip
    assert status == 200, body
    _, plain = await alone.api(
        "POST", "/api/v1/orders/sync", json={"snapshots": [snapshot_from_b(unasked, 1, 1)]}
    )

    # Then the first result carries A's answer: OK, acknowledging B's revision 1
    (result,) = body["results"]
    answer = result["answer"]
    assert (result["state"], result["send_back"]) == ("OK", True)
    assert (answer["state"], answer["ack"], answer["sender"]) == (int(State.OK), 1, "A")
    assert answer["body"]["customer"] == ORDER["customer"]
    # and that answer is not left for A's own sync to send: it went in the response
    assert (await alone.order(asked))["pending"] is False
    # Without asking, the answer waits in A's outbox for the sync, as before.
    assert "answer" not in plain["results"][0]
    assert (await alone.order(unasked))["pending"] is True


@pytest.fixture
async def with_fake_peer(
    amqp_url: str, database_url: str
) -> AsyncIterator[tuple[Instance, FakePeer]]:
    async with facing_fake_peer(amqp_url, database_url) as pair:
        yield pair


def answer_from_p(state: State, ack: int, **extra: Any) -> dict[str, Any]:
    return {"state": int(state), "rev": 1, "ack": ack, "epoch": 0, "origin": "A",
            "sender": "P", "body": ORDER, **extra}  # fmt: skip


async def test_the_sender_applies_answers_and_sends_again_what_it_cannot_read(
    with_fake_peer: tuple[Instance, FakePeer],
) -> None:
    a, peer = with_fake_peer
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    # Given a peer that acknowledges one order in its response and garbles the other's answer
    peer.answers[good] = answer_from_p(State.OK, ack=1)
    peer.answers[bad] = {**answer_from_p(State.OK, ack=1), "state": 42}

    # When A creates both
    for order_id in (good, bad):
        status, _ = await a.api("POST", "/api/v1/orders", json={**ORDER, "id": order_id})
        assert status == 201

    # Then the acknowledged one is synced from the response alone (the peer sent nothing)
    async def acknowledged() -> bool:
        order = await a.order(good)
        return order["sync_state"] == "OK" and order["pending"] is False

    await eventually(acknowledged, message="the answer in the response applied")
    assert all(batch.get("answers") is True for batch in peer.batches)
    # and the one whose answer could not be read stays NEW, in the outbox, and goes again
    # (FAST: resent after a second) until an answer it can read comes back.
    await eventually(lambda: len(peer.sent(bad)) >= 2, message="sent again")
    order = await a.order(bad)
    assert (order["sync_state"], order["pending"]) == ("NEW", True)
    peer.answers[bad] = answer_from_p(State.OK, ack=1)

    async def fixed() -> bool:
        return bool((await a.order(bad))["sync_state"] == "OK")

    await eventually(fixed, message="acknowledged once the answer is readable")
