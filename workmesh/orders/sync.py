"""The sync side of an instance: push orders' snapshots to the peer in batches, sweep for orders
whose answer is late, and pull the peer's recent changes."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.base import utcnow
from models.orders import Order
from schemas.orders import OrderOut, Snapshot
from workmesh.orders import service
from workmesh.orders.peer import Delivery, Peer, PeerError
from workmesh.orders.states import WAITING

log = logging.getLogger(__name__)

SWEEP_LIMIT = 2000


def needs_sending(order: Order) -> bool:
    return order.outbox or order.sync_state in WAITING


async def push_many(
    sessions: async_sessionmaker[AsyncSession], peer: Peer, instance: str, order_ids: list[str]
) -> list[tuple[str, int]]:
    """Send the current snapshots of those of ``order_ids`` that must go, in one request;
    record for each whether the peer took it (a failure keeps it in the outbox) and apply
    the answers the peer gave in its response. Returns the orders whose snapshot must now go
    to the peer (an answer that needs an answer, as an ERROR does)."""
    async with sessions() as session:
        orders = (await session.execute(select(Order).where(Order.id.in_(order_ids)))).scalars()
        going = [(o.id, service.snapshot(o, instance), o.rev) for o in orders if needs_sending(o)]
    if not going:
        return []
    try:
        delivered = await peer.put_snapshots([(order_id, snap) for order_id, snap, _ in going])
    except PeerError as problem:
        delivered = {order_id: Delivery(str(problem)) for order_id, _, _ in going}
    outcomes: list[dict[str, Any]] = []
    answers: list[tuple[str, Snapshot]] = []
    for order_id, _, rev in sorted(going):
        delivery = delivered.get(order_id, Delivery("the peer's answer left it out"))
        if delivery.error is not None:
            log.info("order %s not sent to the peer: %s", order_id, delivery.error)
        elif delivery.answer is not None and delivery.answer.sender == instance:
            log.warning("order %s: the peer answered as this instance; ignored", order_id)
        elif delivery.answer is not None:
            answers.append((order_id, delivery.answer))
        # Revisions start at 1: rev 0 never matches, so a failed send keeps its outbox place.
        outcomes.append({"b_id": order_id, "b_rev": rev if delivery.error is None else 0,
                         "b_error": delivery.error})  # fmt: skip
    rows: Table = Order.__table__  # type: ignore[assignment]
    # Only the revision sent is acknowledged: a newer change keeps its outbox place. One
    # statement, rows in id order: every transaction that locks several orders (this one,
    # a batch from the peer) takes them in that order, so two never deadlock.
    outbox = case((rows.c.rev == bindparam("b_rev"), False), else_=rows.c.outbox)
    to_send: list[tuple[str, int]] = []
    async with sessions() as session, session.begin():
        await session.execute(
            update(rows).where(rows.c.id == bindparam("b_id"))
            .values(last_sent_at=utcnow(), last_send_error=bindparam("b_error"), outbox=outbox),
            outcomes,
        )  # fmt: skip
        # The peer's answers, as if it had sent them (in id order, like the rows above).
        received = await service.receive_many(session, answers)
        for (order_id, _), result in zip(answers, received, strict=True):
            if result.send_back:
                to_send.append((order_id, (await service.get(session, order_id)).rev))
    return to_send


async def due(session: AsyncSession, resend_after: float) -> list[str]:
    """Orders whose snapshot has waited too long: not delivered, or no answer yet."""
    cutoff = utcnow() - timedelta(seconds=resend_after)
    query = (
        select(Order.id)
        .where(
            or_(Order.outbox.is_(True), Order.sync_state.in_([int(s) for s in WAITING])),
            func.coalesce(Order.last_sent_at, Order.updated_at) < cutoff,
        )
        .order_by(Order.updated_at)
        .limit(SWEEP_LIMIT)
    )
    return list((await session.execute(query)).scalars())


def snapshot_of(item: OrderOut, sender: str) -> Snapshot:
    return Snapshot(
        state=item.state, rev=item.rev, ack=item.ack, epoch=item.epoch, origin=item.origin,
        sender=sender, body=item.body, deleted=item.deleted, error=item.error,
    )  # fmt: skip


async def pull(
    sessions: async_sessionmaker[AsyncSession],
    peer: Peer,
    peer_name: str,
    since: datetime | None,
    page_size: int,
) -> tuple[list[tuple[str, int]], datetime | None]:
    """Read the peer's orders changed since ``since`` and apply each as if it had been sent.
    Returns the orders whose snapshot must now go to the peer, and the newest ``updated_at``
    read (the peer's clock: the next pull starts from it, minus the overlap)."""
    cursor: str | None = None
    newest: datetime | None = None
    to_send: list[tuple[str, int]] = []
    while True:
        items, cursor = await peer.list_page(since, cursor, page_size)
        for item in items:
            newest = item.updated_at if newest is None else max(newest, item.updated_at)
            if not (item.pending or item.state in WAITING):
                # Nothing the peer would send us: the result of an answer it got from us
                # (an OK after our OK, say). Taken as news it would be an unlisted OK/OK.
                continue
            async with sessions() as session, session.begin():
                result = await service.receive(session, item.id, snapshot_of(item, peer_name))
                if result.send_back:
                    to_send.append((item.id, (await service.get(session, item.id)).rev))
        if cursor is None:
            return to_send, newest
