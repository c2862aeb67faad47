"""The Orders API on one instance with no peer: create, read, list with a cursor, update,
delete as a tombstone, and every bad input with its clear error."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_settings
from tests.orders.conftest import FAST, Instance
from workmesh.orders.capability import OrdersCapability
from workmesh.orders.settings import OrdersSettings
from workmesh.runtime import Mesh

ORDER: dict[str, Any] = {
    "customer": "Ivan Petrov",
    "status": "new",
    "items": [{"sku": "SKU-1", "quantity": 2, "price_cents": 1999}],
    "note": "",
}


@pytest.fixture
async def alone(amqp_url: str, database_url: str) -> AsyncIterator[Instance]:
    instance = Instance("A", amqp_url, database_url)
    instance.settings = make_settings(amqp_url, database_url)
    instance.orders = OrdersCapability(OrdersSettings(instance="A", **FAST))
    instance.mesh = Mesh(instance.settings, "orders", [instance.orders])
    async with aiohttp.ClientSession() as http:
        instance.http = http
        await instance.mesh.start()
        try:
            yield instance
        finally:
            await instance.mesh.stop()


async def test_create_read_update_delete(alone: Instance) -> None:
    status, created = await alone.api("POST", "/api/v1/orders", json=ORDER)
    assert status == 201, created
    assert created["sync_state"] == "NEW"
    assert created["origin"] == "A"
    order_id = created["id"]
    assert await alone.order(order_id) == created

    changed = {**ORDER, "status": "paid"}
    status, updated = await alone.api("PUT", f"/api/v1/orders/{order_id}", json=changed)
    assert status == 200, updated
    assert updated["body"]["status"] == "paid"
    # Not yet acknowledged by a peer: the order stays NEW.
    assert updated["sync_state"] == "NEW"
    assert updated["rev"] == created["rev"] + 1

    # The same body again changes nothing.
    status, same = await alone.api("PUT", f"/api/v1/orders/{order_id}", json=changed)
    assert (status, same["rev"]) == (200, updated["rev"])

    status, deleted = await alone.api("DELETE", f"/api/v1/orders/{order_id}")
    assert status == 200, deleted
    assert (deleted["deleted"], deleted["sync_state"]) == (True, "DEL")
    # A tombstone: still readable and listed, so the deletion can sync.
    assert (await alone.order(order_id))["deleted"] is True
    status, again = await alone.api("PUT", f"/api/v1/orders/{order_id}", json=ORDER)
    assert status == 409, again


async def test_create_with_own_id_is_safe_to_repeat(alone: Instance) -> None:
    order_id = str(uuid.uuid4())
    first = await alone.api("POST", "/api/v1/orders", json={**ORDER, "id": order_id})
    second = await alone.api("POST", "/api/v1/orders", json={**ORDER, "id": order_id})
    assert first[0] == 201
    assert second[0] == 200
    assert second[1]["rev"] == first[1]["rev"]
    other = await alone.api("POST", "/api/v1/orders", json={**ORDER, "id": order_id, "note": "x"})
    assert other[0] == 409


async def test_if_match_guards_against_lost_updates(alone: Instance) -> None:
    _, created = await alone.api("POST", "/api/v1/orders", json=ORDER)
    path = f"/api/v1/orders/{created['id']}"
    stale = {"If-Match": str(created["rev"])}
    assert (await alone.api("PUT", path, json={**ORDER, "note": "1"}, headers=stale))[0] == 200
    status, body = await alone.api("PUT", path, json={**ORDER, "note": "2"}, headers=stale)
    assert status == 412, body
    assert (await alone.order(created["id"]))["body"]["note"] == "1"


async def test_list_pages_with_a_stable_cursor(alone: Instance) -> None:
    ids = set()
    for n in range(7):
        _, created = await alone.api("POST", "/api/v1/orders", json={**ORDER, "note": str(n)})
        ids.add(created["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        status, page = await alone.api("GET", "/api/v1/orders", params=params)
        assert status == 200, page
        seen += [o["id"] for o in page["orders"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(ids)

    _, everything = await alone.api("GET", "/api/v1/orders", params={"limit": "100"})
    middle = everything["orders"][3]["updated_at"]
    _, recent = await alone.api("GET", "/api/v1/orders", params={"updated_since": middle})
    assert [o["id"] for o in recent["orders"]] == [o["id"] for o in everything["orders"][3:]]


BAD_INPUT: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("POST", "/api/v1/orders", {"customer": ""}, 422),
        ("POST", "/api/v1/orders", {**ORDER, "items": [{"sku": "x", "quantity": 0,
                                                         "price_cents": 1}]}, 422),
        ("POST", "/api/v1/orders", {**ORDER, "surprise": 1}, 422),
        ("GET", "/api/v1/orders/not-a-uuid", None, 422),
        ("GET", f"/api/v1/orders/{uuid.UUID(int=1)}", None, 404),
        ("PUT", f"/api/v1/orders/{uuid.UUID(int=1)}", ORDER, 404),
        ("DELETE", f"/api/v1/orders/{uuid.UUID(int=1)}", None, 404),
        ("GET", "/api/v1/orders?limit=0", None, 422),
        ("GET", "/api/v1/orders?cursor=garbage", None, 422),
        ("GET", "/api/v1/orders?updated_since=yesterday", None, 422),
        ("GET", "/api/v1/orders?updated_since=2026-01-01T00:00:00", None, 422),
        ("POST", f"/api/v1/orders/{uuid.UUID(int=1)}/resolve", {"take": "mine"}, 404),
        ("PUT", f"/api/v1/orders/{uuid.UUID(int=1)}/sync", {"state": 1}, 422),
        ("PUT", f"/api/v1/orders/{uuid.UUID(int=1)}/sync",
         {"state": 9, "rev": 1, "ack": 0, "epoch": 0, "origin": "B", "sender": "B",
          "body": ORDER}, 422),
        ("POST", "/api/v1/orders/sync", {"snapshots": []}, 422),
        ("POST", "/api/v1/orders/sync", {"snapshots": [{"state": 1}]}, 422),
        ("POST", "/api/v1/orders/sync", {"orders": []}, 422),
        ("POST", "/api/v1/orders/sync",
         {"snapshots": [{"id": "x", "state": 1, "rev": 1, "ack": 0, "epoch": 0, "origin": "B",
                         "sender": "B", "body": ORDER}]}, 422),
        ("POST", "/api/v1/orders/sync",
         {"snapshots": [{"id": str(uuid.UUID(int=n)), "state": 1, "rev": 1, "ack": 0,
                         "epoch": 0, "origin": "B", "sender": "B", "body": ORDER}
                        for n in range(501)]}, 422),
    ]  # fmt: skip


async def test_bad_input(alone: Instance) -> None:
    # One mesh for every case: starting one per case would cost more than the cases.
    for method, path, body, status in BAD_INPUT:
        got, answer = await alone.api(method, path, json=body)
        assert got == status, (method, path, answer)
        assert answer["error"]


def snapshot_from_b(order_id: str, state: int, rev: int, note: str = "") -> dict[str, Any]:
    return {"id": order_id, "state": state, "rev": rev, "ack": 0, "epoch": 0, "origin": "B",
            "sender": "B", "body": {**ORDER, "note": note}}  # fmt: skip


async def test_a_batch_of_snapshots_answers_for_each_order(alone: Instance) -> None:
    # Given an order of A's that B has not acknowledged (NEW here)
    _, mine = await alone.api("POST", "/api/v1/orders", json=ORDER)
    new_there, changed_there = str(uuid.uuid4()), str(uuid.uuid4())

    # When B sends four snapshots at once: a new order, the same order changed, a creation
    # with the id of A's own unacknowledged one, and a combination the table does not list
    batch = [
        snapshot_from_b(new_there, state=1, rev=1, note="first"),
        snapshot_from_b(new_there, state=2, rev=2, note="second"),
        snapshot_from_b(mine["id"], state=1, rev=1, note="theirs"),
        snapshot_from_b(changed_there, state=5, rev=1),  # OK for an order A never had
    ]
    status, body = await alone.api("POST", "/api/v1/orders/sync", json={"snapshots": batch})

    # Then each has its outcome, by the table, in the order sent
    assert status == 200, body
    got = [(r["id"], r["outcome"], r["state"], r["send_back"]) for r in body["results"]]
    assert got == [
        (new_there, "applied", "OK", True),
        (new_there, "applied", "OK", True),
        (mine["id"], "applied", "COLLISION", True),
        (changed_there, "error", "ERROR", True),
    ]
    _, there = await alone.api("GET", f"/api/v1/orders/{new_there}")
    assert there["body"]["note"] == "second"


async def test_refusals(alone: Instance) -> None:
    # One mesh for the three: each case is quick, a mesh start is not.
    snap = {"state": 1, "rev": 1, "ack": 0, "epoch": 0, "origin": "A", "sender": "A",
            "body": ORDER}  # fmt: skip
    status, body = await alone.api("PUT", f"/api/v1/orders/{uuid.uuid4()}/sync", json=snap)
    assert status == 422, body
    assert "from itself" in body["error"]
    batch = {"snapshots": [{**snap, "id": str(uuid.uuid4())}]}
    status, body = await alone.api("POST", "/api/v1/orders/sync", json=batch)
    assert status == 422, body
    assert "from itself" in body["error"]

    assert alone.http is not None
    async with alone.http.get(alone.base + "/api/v1/orders") as response:
        assert response.status == 401

    _, created = await alone.api("POST", "/api/v1/orders", json=ORDER)
    status, body = await alone.api(
        "POST", f"/api/v1/orders/{created['id']}/resolve", json={"take": "mine"}
    )
    assert status == 409, body
