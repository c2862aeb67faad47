"""The sync side of an instance: push an order's snapshot to the peer, sweep for orders whose
answer is late, and pull the peer's recent changes."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.base import utcnow
from models.orders import Order
from schemas.orders import OrderOut, Snapshot
from workmesh.orders import service
from workmesh.orders.peer import Peer, PeerError
from workmesh.orders.states import WAITING

log = logging.getLogger(__name__)

SWEEP_LIMIT = 2000


def needs_sending(order: Order) -> bool:
    return order.outbox or order.sync_state in WAITING


async def push(
    sessions: async_sessionmaker[AsyncSession], peer: Peer, instance: str, order_id: str
) -> bool:
    """Send the order's current snapshot if it must go; True when the peer took it (or
    nothing had to go)."""
    async with sessions() as session:
        order = await session.get(Order, order_id)
        if order is None or not needs_sending(order):
            return True
        snap, rev = service.snapshot(order, instance), order.rev
    error: str | None = None
    try:
        await peer.put_snapshot(order_id, snap)
    except PeerError as problem:
        error = str(problem)
        log.info("order %s not sent to the peer: %s", order_id, error)
    # Only this revision went out: a newer change keeps its place in the outbox.
    outbox = (
        Order.outbox if error is not None else case((Order.rev == rev, False), else_=Order.outbox)
    )
    async with sessions() as session, session.begin():
        await session.execute(
            update(Order)
            .where(Order.id == order_id)
            .values(last_sent_at=utcnow(), last_send_error=error, outbox=outbox)
        )
    return error is None


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
