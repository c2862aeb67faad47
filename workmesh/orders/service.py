"""Orders in the database: local changes through the API, and snapshots from the peer run
through the transition table (``receive``). Callers own the transaction and publish the
``orders.changed`` event after it commits when the result says so."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.orders import Order
from schemas.orders import OrderBody, OrderCreate, OrderOut, Resolve, Snapshot
from workmesh.orders.states import ACKS, FLAGGED, WAITING, Adopt, State, Unlisted, transition

log = logging.getLogger(__name__)


class OrderProblem(Exception):
    """A local change that cannot be made; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Received:
    """What a snapshot from the peer did here."""

    outcome: str  # applied | error | stale | duplicate | outdated-ack
    state: State
    send_back: bool  # the order's snapshot must go to the peer (publish orders.changed)


def body_of(order: Order) -> OrderBody:
    return OrderBody.model_validate(order.body)


def out(order: Order) -> OrderOut:
    return OrderOut(
        id=order.id,
        body=body_of(order),
        deleted=order.deleted,
        origin=order.origin,
        sync_state=State(order.sync_state).name,
        state=order.sync_state,
        rev=order.rev,
        ack=order.peer_rev,
        epoch=order.epoch,
        theirs=order.theirs,
        error=order.error,
        pending=order.outbox,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def snapshot(order: Order, sender: str) -> Snapshot:
    return Snapshot(
        state=order.sync_state,
        rev=order.rev,
        ack=order.peer_rev,
        epoch=order.epoch,
        origin=order.origin,
        sender=sender,
        body=body_of(order),
        deleted=order.deleted,
        error=order.error,
    )


def _changed(order: Order, state: State | None = None) -> None:
    """Record a change of what this side would tell the peer."""
    now = utcnow()
    if state is not None and state != order.sync_state:
        order.sync_state = int(state)
        order.state_since = now
    order.rev += 1
    order.updated_at = now


async def _locked(session: AsyncSession, order_id: str) -> Order | None:
    """The order, locked for this transaction: a local edit and a snapshot from the peer for
    the same order take turns instead of both writing what they read (a lost update)."""
    return (await _locked_many(session, [order_id])).get(order_id)


async def create(session: AsyncSession, data: OrderCreate, instance: str) -> tuple[Order, bool]:
    """A new order (NEW); with a client-given id, repeating the same create is harmless."""
    body = OrderBody.model_validate(data.model_dump(exclude={"id"})).model_dump(mode="json")
    order_id = str(data.id or uuid.uuid4())
    existing = await _locked(session, order_id)
    if existing is not None:
        if existing.body == body and not existing.deleted:
            return existing, False
        raise OrderProblem(409, "an order with this id exists already with another body")
    now = utcnow()
    order = Order(
        id=order_id, body=body, deleted=False, origin=instance, sync_state=int(State.NEW),
        rev=1, peer_rev=0, epoch=0, outbox=True, created_at=now, updated_at=now,
        state_since=now,
    )  # fmt: skip
    session.add(order)
    return order, True


async def get(session: AsyncSession, order_id: str) -> Order:
    order = await session.get(Order, order_id)
    if order is None:
        raise OrderProblem(404, "no such order")
    return order


def _editable(order: Order, if_match: int | None) -> None:
    if if_match is not None and if_match != order.rev:
        raise OrderProblem(412, f"the order is at revision {order.rev}, not {if_match}")
    if State(order.sync_state) in FLAGGED:
        raise OrderProblem(409, f"the order is in {State(order.sync_state).name}: resolve it first")


async def update(
    session: AsyncSession, order_id: str, body: OrderBody, if_match: int | None = None
) -> tuple[Order, bool]:
    """A local edit; returns the order and whether anything changed."""
    order = await _locked(session, order_id)
    if order is None:
        raise OrderProblem(404, "no such order")
    _editable(order, if_match)
    if order.deleted:
        raise OrderProblem(409, "the order is deleted")
    new = body.model_dump(mode="json")
    if new == order.body:
        return order, False
    order.body = new
    # Until the peer has acknowledged the creation the order stays NEW: an UPD of an order
    # the peer never saw would be an error there.
    _changed(order, State.NEW if order.sync_state == State.NEW else State.UPD)
    order.outbox = True
    return order, True


async def delete(
    session: AsyncSession, order_id: str, if_match: int | None = None
) -> tuple[Order, bool]:
    """A local delete leaves a tombstone in DEL; deleting a deleted order changes nothing."""
    order = await _locked(session, order_id)
    if order is None:
        raise OrderProblem(404, "no such order")
    if order.deleted and State(order.sync_state) not in FLAGGED:
        return order, False
    _editable(order, if_match)
    order.deleted = True
    _changed(order, State.DEL)
    order.outbox = True
    return order, True


async def resolve(session: AsyncSession, order_id: str, choice: Resolve) -> Order:
    """End a COLLISION or an ERROR: the chosen version becomes a local change (UPD or DEL)
    of a new epoch, which the peer takes whatever state it is in."""
    order = await _locked(session, order_id)
    if order is None:
        raise OrderProblem(404, "no such order")
    if State(order.sync_state) not in FLAGGED:
        raise OrderProblem(
            409, f"only a COLLISION or ERROR is resolved; the order is "
            f"{State(order.sync_state).name}"
        )  # fmt: skip
    if choice.take == "theirs":
        if order.theirs is None:
            raise OrderProblem(409, "there is no version of the peer to take")
        order.body = order.theirs["body"]
        order.deleted = bool(order.theirs.get("deleted"))
    elif choice.take == "merged":
        if choice.body is None:
            raise OrderProblem(422, "a merged resolution needs the merged body")
        order.body = choice.body.model_dump(mode="json")
        order.deleted = choice.deleted
    elif choice.body is not None or choice.deleted:
        raise OrderProblem(422, "only a merged resolution takes a body")
    order.theirs = None
    order.error = None
    order.epoch += 1
    _changed(order, State.DEL if order.deleted else State.UPD)
    order.outbox = True
    return order


async def page(
    session: AsyncSession, since: datetime | None, after: tuple[datetime, str] | None, limit: int
) -> list[Order]:
    """Orders (tombstones too) changed at or after ``since``, in (updated_at, id) order,
    after the keyset cursor ``after``."""
    query = select(Order).order_by(Order.updated_at, Order.id).limit(limit)
    if since is not None:
        query = query.where(Order.updated_at >= since)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(Order.updated_at > at, and_(Order.updated_at == at, Order.id > last_id))
        )
    return list((await session.execute(query)).scalars())


def answered(order: Order) -> None:
    """The order's snapshot goes to the peer in the answer being written: out of the outbox,
    in the same transaction that made it. A lost answer is no loss: the peer still waits and
    sends its snapshot again, which is answered again."""
    order.outbox = False
    order.last_sent_at = utcnow()
    order.last_send_error = None


def _version(snap: Snapshot) -> dict[str, Any]:
    return {"body": snap.body.model_dump(mode="json"), "deleted": snap.deleted}


async def receive(session: AsyncSession, order_id: str, snap: Snapshot) -> Received:
    """Apply a snapshot from the peer: drop old news, then the transition table."""
    return _take(session, order_id, await _locked(session, order_id), snap)[0]


async def receive_many(
    session: AsyncSession, snapshots: Sequence[tuple[str, Snapshot]]
) -> list[Received]:
    """``receive`` for several snapshots in one transaction, in the order given, with every
    order they name locked by one statement: on SQLite one trip to its thread instead of one
    per order, all of it time the database's one write lock is held."""
    orders = await _locked_many(session, sorted({order_id for order_id, _ in snapshots}))
    results = []
    for order_id, snap in snapshots:
        received, orders[order_id] = _take(session, order_id, orders.get(order_id), snap)
        results.append(received)
    return results


async def _locked_many(session: AsyncSession, order_ids: list[str]) -> dict[str, Order]:
    """The orders that exist of ``order_ids``, locked for this transaction in one statement
    (on PostgreSQL in id order, as every transaction that locks several orders takes them)."""
    if not order_ids:
        return {}
    if session.get_bind().dialect.name == "sqlite":
        # SQLite has no FOR UPDATE, and its driver begins the transaction only at the first
        # write, so a plain read would be outside it. A no-op write takes the database's
        # write lock and returns the rows in the same statement: SQLite takes one writer at a
        # time, and every trip to aiosqlite's thread is time the lock is held.
        query: Any = (
            sql_update(Order).where(Order.id.in_(order_ids)).values(rev=Order.rev)
            .returning(Order)
            .execution_options(populate_existing=True, synchronize_session=False)
        )  # fmt: skip
    else:
        query = (
            select(Order).where(Order.id.in_(order_ids)).order_by(Order.id).with_for_update()
            .execution_options(populate_existing=True)
        )  # fmt: skip
    return {order.id: order for order in (await session.execute(query)).scalars()}


def _take(
    session: AsyncSession, order_id: str, order: Order | None, snap: Snapshot
) -> tuple[Received, Order]:
    """``receive`` on the order as locked (None: not here); returns the order after it."""
    received = State(snap.state)
    if order is not None:
        if snap.epoch < order.epoch:
            return Received("stale", State(order.sync_state), False), order
        if snap.epoch > order.epoch:
            # The peer resolved a collision or error: start again from a synced order.
            order.epoch = snap.epoch
            order.theirs = None
            order.error = None
            _changed(order, State.DEL_SYNCED if order.deleted else State.OK)
        elif snap.rev < order.peer_rev or (snap.rev == order.peer_rev and received in ACKS):
            return Received("stale", State(order.sync_state), False), order
        elif snap.rev == order.peer_rev and received in FLAGGED - WAITING:
            return Received("duplicate", State(order.sync_state), False), order
        was = State(order.sync_state)
        if received in ACKS and was in WAITING - {State.ERROR} and snap.ack < order.rev:
            # An answer to an older revision: ours changed since; the newer one is on its way.
            order.peer_rev = snap.rev
            return Received("outdated-ack", was, False), order
        if received in (State.UPD, State.DEL) and was in WAITING and snap.ack >= order.rev:
            # The peer changed the order after applying our latest: its change carries the
            # acknowledgement we have not seen (it may be lost or late).
            implied = State.DEL_SYNCED if was is State.DEL else State.OK
            _apply(order, transition(implied, was), snap)
    try:
        row = transition(received, State(order.sync_state) if order is not None else None)
    except Unlisted as problem:
        return _error(session, order, order_id, snap, str(problem))
    if order is None:
        now = utcnow()
        order = Order(
            id=order_id, body=snap.body.model_dump(mode="json"), deleted=snap.deleted,
            origin=snap.origin, sync_state=int(row.becomes), rev=1, peer_rev=snap.rev,
            epoch=snap.epoch, outbox=row.send_back, created_at=now, updated_at=now,
            state_since=now,
        )  # fmt: skip
        if row.adopt is Adopt.KEEP_THEIRS:
            order.theirs = _version(snap)
        if received is State.ERROR:
            order.error = snap.error or "the peer reported an error"
        session.add(order)
        return Received("applied", row.becomes, row.send_back), order
    _apply(order, row, snap)
    order.peer_rev = max(order.peer_rev, snap.rev)
    if received is State.ERROR:
        order.error = snap.error or "the peer reported an error"
    return Received("applied", row.becomes, row.send_back), order


def _apply(order: Order, row: Any, snap: Snapshot) -> None:
    changed = row.becomes != order.sync_state
    if row.adopt is Adopt.TAKE:
        new = snap.body.model_dump(mode="json")
        if new != order.body or snap.deleted != order.deleted:
            order.body, order.deleted = new, snap.deleted
            changed = True
    elif row.adopt is Adopt.KEEP_THEIRS and order.theirs != _version(snap):
        order.theirs = _version(snap)
        changed = True
    if changed:
        _changed(order, row.becomes)
    if row.send_back:
        order.outbox = True
    elif row.becomes in ACKS:
        # The peer acknowledged our latest revision: nothing of ours is left to tell it. (An
        # OK sent unasked would be an error there: OK is only ever an answer.)
        order.outbox = False


def _error(
    session: AsyncSession, order: Order | None, order_id: str, snap: Snapshot, reason: str
) -> tuple[Received, Order]:
    """An unlisted combination: ERROR here, and the error goes to the peer."""
    log.warning(
        "order %s: %s (snapshot rev %d ack %d from %s; here rev %s ack %s outbox %s)",
        order_id, reason, snap.rev, snap.ack, snap.sender,
        order.rev if order else None, order.peer_rev if order else None,
        order.outbox if order else None,
    )  # fmt: skip
    if order is None:
        now = utcnow()
        order = Order(
            id=order_id, body=snap.body.model_dump(mode="json"), deleted=snap.deleted,
            origin=snap.origin, sync_state=int(State.ERROR), rev=1, peer_rev=snap.rev,
            epoch=snap.epoch, created_at=now, updated_at=now, state_since=now,
        )  # fmt: skip
        session.add(order)
    else:
        _changed(order, State.ERROR)
        order.peer_rev = max(order.peer_rev, snap.rev)
    order.theirs = _version(snap)
    order.error = reason
    order.outbox = True
    return Received("error", State.ERROR, True), order
