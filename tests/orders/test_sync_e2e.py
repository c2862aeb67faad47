"""Two real instances, A and B (own databases, own vhosts), syncing through TCP proxies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from models.orders import Order
from tests.conftest import eventually
from tests.orders.conftest import Pair

ORDER: dict[str, Any] = {
    "customer": "Olga",
    "status": "new",
    "items": [{"sku": "A-1", "quantity": 1, "price_cents": 500}],
    "note": "",
}


async def test_created_and_changed_in_b_appears_in_a_and_back(pair: Pair) -> None:
    a, b = pair.a, pair.b
    # The seed's check: create in B, change it, and the change is in A ...
    _, created = await b.api("POST", "/api/v1/orders", json=ORDER)
    order_id = created["id"]
    await pair.settled(order_id)
    assert (await a.order(order_id))["origin"] == "B"
    status, _ = await b.api("PUT", f"/api/v1/orders/{order_id}", json={**ORDER, "note": "from B"})
    assert status == 200
    await pair.settled(order_id)
    assert (await a.order(order_id))["body"]["note"] == "from B"
    # ... and the other way round.
    await a.api("PUT", f"/api/v1/orders/{order_id}", json={**ORDER, "status": "paid"})
    await pair.settled(order_id)
    assert (await b.order(order_id))["body"]["status"] == "paid"
    # A deletion syncs as a tombstone.
    await a.api("DELETE", f"/api/v1/orders/{order_id}")
    await pair.settled(order_id)
    gone = await b.order(order_id)
    assert (gone["deleted"], gone["sync_state"]) == (True, "DEL_SYNCED")
    # Nothing echoes: both ends stay where they are.
    revs = ((await a.order(order_id))["rev"], gone["rev"])
    _, marker = await a.api("POST", "/api/v1/orders", json=ORDER)
    await pair.settled(marker["id"])
    assert ((await a.order(order_id))["rev"], (await b.order(order_id))["rev"]) == revs


async def test_concurrent_edits_collide_on_both_sides_and_a_resolution_syncs(pair: Pair) -> None:
    a, b = pair.a, pair.b
    _, created = await a.api("POST", "/api/v1/orders", json=ORDER)
    order_id = created["id"]
    await pair.settled(order_id)
    # Both sides change the order while the link is down: neither change can be sent.
    await a.proxy.down()
    await b.proxy.down()
    await a.api("PUT", f"/api/v1/orders/{order_id}", json={**ORDER, "note": "A's"})
    await b.api("PUT", f"/api/v1/orders/{order_id}", json={**ORDER, "note": "B's"})
    await a.proxy.up()
    await b.proxy.up()
    await pair.settled(order_id)
    mine, theirs = await a.order(order_id), await b.order(order_id)
    assert (mine["sync_state"], theirs["sync_state"]) == ("COLLISION", "COLLISION")
    assert mine["body"]["note"] == "A's"
    assert mine["theirs"]["body"]["note"] == "B's"
    assert theirs["theirs"]["body"]["note"] == "A's"
    # Editing a collided order is refused until it is resolved.
    status, _ = await a.api("PUT", f"/api/v1/orders/{order_id}", json=ORDER)
    assert status == 409
    status, resolved = await b.api(
        "POST", f"/api/v1/orders/{order_id}/resolve",
        json={"take": "merged", "body": {**ORDER, "note": "A's and B's"}},
    )  # fmt: skip
    assert status == 200, resolved
    await pair.settled(order_id)
    for side in (a, b):
        order = await side.order(order_id)
        assert (order["sync_state"], order["body"]["note"]) == ("OK", "A's and B's")
        assert order["theirs"] is None


async def test_deleted_on_both_sides_ends_deleted_on_both(pair: Pair) -> None:
    a, b = pair.a, pair.b
    _, created = await a.api("POST", "/api/v1/orders", json=ORDER)
    order_id = created["id"]
    await pair.settled(order_id)
    await a.proxy.down()
    await b.proxy.down()
    await a.api("DELETE", f"/api/v1/orders/{order_id}")
    await b.api("DELETE", f"/api/v1/orders/{order_id}")
    await a.proxy.up()
    await b.proxy.up()
    await pair.settled(order_id)
    for side in (a, b):
        order = await side.order(order_id)
        assert (order["sync_state"], order["deleted"]) == ("DEL_SYNCED", True)


async def test_the_peer_down_for_a_while_then_everything_converges(pair: Pair) -> None:
    a, b = pair.a, pair.b
    await b.proxy.down()  # A cannot reach B; B still reaches A
    ids = []
    for n in range(10):
        _, created = await a.api("POST", "/api/v1/orders", json={**ORDER, "note": f"a{n}"})
        ids.append(created["id"])
    _, from_b = await b.api("POST", "/api/v1/orders", json={**ORDER, "note": "b"})
    ids.append(from_b["id"])
    await a.api("PUT", f"/api/v1/orders/{ids[0]}", json={**ORDER, "note": "a0 changed"})
    await a.api("DELETE", f"/api/v1/orders/{ids[1]}")

    async def stuck() -> bool:
        return bool((await a.order(ids[2]))["sync_state"] == "NEW")

    await eventually(stuck, message="A's order waits for B")
    await asyncio.sleep(1.5)  # a few resend rounds fail while B is away
    await b.proxy.up()
    await pair.settled(*ids)
    assert (await b.order(ids[0]))["body"]["note"] == "a0 changed"
    assert (await b.order(ids[1]))["deleted"] is True


async def test_a_restarted_instance_catches_up_by_pull(pair: Pair) -> None:
    a, b = pair.a, pair.b
    # B is stopped: its sync consumers and its API are gone; A's changes pile up.
    await b.stop()
    _, created = await a.api("POST", "/api/v1/orders", json=ORDER)
    await a.api("PUT", f"/api/v1/orders/{created['id']}", json={**ORDER, "note": "while away"})
    assert b.orders is not None
    await b.start(a.proxy.url, b.orders.settings.peer_token)
    await pair.settled(created["id"])
    assert (await b.order(created["id"]))["body"]["note"] == "while away"


@pytest.mark.pair(a_pushes=False, b={"pull_every": 0.3})
async def test_the_pull_alone_brings_the_changes(pair: Pair) -> None:
    """A has no peer URL, so it sends nothing: B finds A's orders by pulling A's list, and its
    answers (B does push) bring A to OK."""
    a, b = pair.a, pair.b
    _, created = await a.api("POST", "/api/v1/orders", json=ORDER)
    await a.api("PUT", f"/api/v1/orders/{created['id']}", json={**ORDER, "note": "pulled"})
    await pair.settled(created["id"])
    assert (await b.order(created["id"]))["body"]["note"] == "pulled"


@pytest.mark.pair(a={"pull_every": 600.0}, b={"pull_every": 600.0})
async def test_the_resend_sweep_alone_delivers_after_an_outage(pair: Pair) -> None:
    """No pull after the first one: what A could not send while B was away reaches B through
    the resend sweep."""
    a, b = pair.a, pair.b
    await b.proxy.down()
    _, created = await a.api("POST", "/api/v1/orders", json=ORDER)

    async def failed_once() -> bool:
        assert a.mesh is not None
        async with a.mesh.sessions() as session:
            order = await session.get(Order, created["id"])
            return order is not None and order.last_send_error is not None

    await eventually(failed_once, message="A's first send failed")
    await asyncio.sleep(0.5)
    await b.proxy.up()
    await pair.settled(created["id"])
    assert (await b.order(created["id"]))["origin"] == "A"


@pytest.mark.pair(one_vhost=True)
async def test_two_instances_share_one_vhost_as_in_compose(pair: Pair) -> None:
    a, b = pair.a, pair.b
    _, created = await b.api("POST", "/api/v1/orders", json=ORDER)
    await b.api("PUT", f"/api/v1/orders/{created['id']}", json={**ORDER, "note": "one vhost"})
    await pair.settled(created["id"])
    assert (await a.order(created["id"]))["body"]["note"] == "one vhost"
    _, other = await a.api("POST", "/api/v1/orders", json={**ORDER, "note": "from A"})
    await pair.settled(other["id"])
    assert (await b.order(other["id"]))["origin"] == "A"
