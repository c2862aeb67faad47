"""Property: whatever random interleaving of creates, edits, deletes, resolutions and outages
happens on A and B, once the link is back both sides end equal — or both flag the order
(COLLISION or error) for a person to resolve. Nothing stays waiting, nothing diverges
silently.

One pair of instances serves every example (each example uses fresh order ids); hypothesis
draws the programs. Examples are few (the suite must stay quick) but every one is a real run
through RabbitMQ, HTTP and both databases.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import eventually
from tests.orders.conftest import Instance, Pair

ORDER: dict[str, Any] = {"customer": "Prop", "status": "new", "items": [], "note": ""}
SIDES = st.sampled_from(["A", "B"])
KEYS = st.integers(min_value=0, max_value=2)

OPS = st.one_of(
    st.tuples(st.just("create"), SIDES, KEYS),
    st.tuples(st.just("edit"), SIDES, KEYS, st.sampled_from(["x", "y", "z"])),
    st.tuples(st.just("delete"), SIDES, KEYS),
    st.tuples(st.just("resolve"), SIDES, KEYS, st.sampled_from(["mine", "theirs"])),
    st.tuples(st.just("down"), SIDES),
    st.tuples(st.just("up"), SIDES),
    st.tuples(st.just("pause"), st.sampled_from([0.0, 0.05, 0.3])),
)
FINAL = {"OK", "DEL_SYNCED"}
FLAGGED = {"COLLISION", "ERROR", "ERROR_SYNCED"}


def agree(left: dict[str, Any] | None, right: dict[str, Any] | None) -> bool:
    if left is None or right is None:
        return left is right
    if left["pending"] or right["pending"]:
        return False
    states = {left["sync_state"], right["sync_state"]}
    if states <= FINAL:
        return bool(
            len(states) == 1
            and left["body"] == right["body"]
            and left["deleted"] == right["deleted"]
        )
    # Both flagged, neither still waiting to tell the other (ERROR waits for its answer).
    return states <= FLAGGED and "ERROR" not in states


async def run_program(pair: Pair, origins: list[str], program: list[tuple[Any, ...]]) -> None:
    sides = {"A": pair.a, "B": pair.b}
    ids = [str(uuid.uuid4()) for _ in range(3)]
    touched: set[str] = set(ids)
    for order_id, origin in zip(ids, origins, strict=True):
        await sides[origin].api("POST", "/api/v1/orders", json={**ORDER, "id": order_id})
    for op in program:
        kind = op[0]
        if kind == "create":
            await sides[op[1]].api("POST", "/api/v1/orders", json={**ORDER, "id": ids[op[2]]})
        elif kind == "edit":
            await sides[op[1]].api(
                "PUT", f"/api/v1/orders/{ids[op[2]]}", json={**ORDER, "note": op[3]}
            )
        elif kind == "delete":
            await sides[op[1]].api("DELETE", f"/api/v1/orders/{ids[op[2]]}")
        elif kind == "resolve":
            await sides[op[1]].api(
                "POST", f"/api/v1/orders/{ids[op[2]]}/resolve", json={"take": op[3]}
            )
        elif kind == "down":
            await sides[op[1]].proxy.down()
        elif kind == "up":
            if sides[op[1]].proxy._server is None:
                await sides[op[1]].proxy.up()
        else:
            await asyncio.sleep(op[1])
    for side in sides.values():
        if side.proxy._server is None:
            await side.proxy.up()

    async def converged() -> bool:
        for order_id in touched:
            left, right = await _get(pair.a, order_id), await _get(pair.b, order_id)
            if not agree(left, right):
                return False
        return True

    await eventually(converged, timeout=30, every=0.2, message=f"convergence of {program}")


async def _get(side: Instance, order_id: str) -> dict[str, Any] | None:
    status, body = await side.api("GET", f"/api/v1/orders/{order_id}")
    return dict(body) if status == 200 else None


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    origins=st.lists(SIDES, min_size=3, max_size=3),
    program=st.lists(OPS, min_size=1, max_size=12),
)
async def test_random_interleavings_end_equal_or_flagged(
    pair: Pair, origins: list[str], program: list[tuple[Any, ...]]
) -> None:
    await run_program(pair, origins, program)
