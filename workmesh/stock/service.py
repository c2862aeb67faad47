"""Stock in the database: products, the ledger applied to marketplace events, and the push
items that carry each change to the marketplaces. Nothing here commits; callers do."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from models.base import utcnow
from models.stock import (
    StockOrderLine,
    StockProblem,
    StockProduct,
    StockPushItem,
    StockReturn,
)
from schemas.stock import EventKind, Marketplace, MarketplaceEvent, ProductIn, StockChanged
from workmesh.stock.ledger import LineState, move_line

# The product column that holds each marketplace's item key (as an event's ``item`` names it).
ITEM_COLUMNS = {
    Marketplace.OZON: StockProduct.ozon_offer_id,
    Marketplace.WILDBERRIES: StockProduct.wb_chrt_id,
    Marketplace.YANDEX: StockProduct.ym_shop_sku,
}


# The same problem reported again within this time is recorded once.
REPORT_QUIET = timedelta(hours=1)


class UnknownProduct(LookupError):
    pass


def sells_on(product: StockProduct, marketplace: Marketplace) -> bool:
    """Whether the product has every id that marketplace needs to take its stock."""
    if marketplace is Marketplace.OZON:
        return product.ozon_offer_id is not None and product.ozon_warehouse_id is not None
    if marketplace is Marketplace.WILDBERRIES:
        return product.wb_chrt_id is not None and product.wb_warehouse_id is not None
    return product.ym_shop_sku is not None and product.ym_campaign_id is not None


def changed(product: StockProduct, reason: str) -> StockChanged:
    return StockChanged(
        sku=product.sku,
        on_hand=product.on_hand,
        reserved=product.reserved,
        available=product.available,
        version=product.version,
        reason=reason[:200],
    )


async def lock_product(session: AsyncSession, sku: str) -> StockProduct | None:
    """The product, locked until the transaction ends (PostgreSQL; SQLite locks the file)."""
    result = await session.execute(
        select(StockProduct)
        .where(StockProduct.sku == sku)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def queue_pushes(
    session: AsyncSession, product: StockProduct, marketplaces: Iterable[Marketplace]
) -> None:
    """Coalesce the product's current stock into one push item per marketplace it sells on.

    Only a newer version replaces what is queued, so old news arriving late changes nothing.
    """
    for marketplace in marketplaces:
        if not sells_on(product, marketplace):
            continue
        item = await session.get(StockPushItem, (marketplace.value, product.sku))
        if item is None:
            session.add(
                StockPushItem(
                    marketplace=marketplace.value,
                    sku=product.sku,
                    target=product.available,
                    version=product.version,
                    pending=True,
                    pushed_version=0,
                )
            )
        elif product.version > item.version:
            item.target, item.version, item.pending = product.available, product.version, True
            # Written even when it was already pending as read: the pusher may record the
            # answer about the previous version between our read and our write, and an
            # UPDATE that left ``pending`` out would keep its False and strand this value.
            flag_modified(item, "pending")


def _bump(product: StockProduct, on_hand: int = 0, reserved: int = 0) -> None:
    product.on_hand += on_hand
    product.reserved = max(0, product.reserved + reserved)
    product.version += 1
    product.updated_at = utcnow()


async def upsert_product(
    session: AsyncSession, sku: str, body: ProductIn, marketplaces: Iterable[Marketplace]
) -> tuple[StockProduct, bool]:
    """Create or update a product's mapping; returns it and whether it is new."""
    product = await lock_product(session, sku)
    created = product is None
    if product is None:
        product = StockProduct(sku=sku, on_hand=0, reserved=0, version=0, updated_at=utcnow())
        session.add(product)
    for field in ProductIn.model_fields:
        if field != "on_hand" and field in body.model_fields_set:
            setattr(product, field, getattr(body, field))
    # A new or changed mapping is news for the marketplaces even when the count is not.
    _bump(product, on_hand=0 if body.on_hand is None else body.on_hand - product.on_hand)
    await session.flush()
    await queue_pushes(session, product, marketplaces)
    return product, created


async def set_stock(
    session: AsyncSession,
    sku: str,
    marketplaces: Iterable[Marketplace],
    *,
    on_hand: int | None = None,
    delta: int | None = None,
) -> StockProduct:
    """A stock count by hand (``on_hand``) or a correction (``delta``)."""
    product = await lock_product(session, sku)
    if product is None:
        raise UnknownProduct(sku)
    change = (on_hand - product.on_hand) if on_hand is not None else (delta or 0)
    if product.on_hand + change < 0:
        raise ValueError(f"on_hand would become {product.on_hand + change}; it cannot be negative")
    _bump(product, on_hand=change)
    await queue_pushes(session, product, marketplaces)
    return product


async def report_problem(session: AsyncSession, marketplace: str, source: str, detail: str) -> None:
    """Record bad data from a marketplace, once: overlapping polls read the same bad entry
    again and again, so the same problem within ``REPORT_QUIET`` is not recorded twice."""
    detail = detail[:2000]
    seen = await session.execute(
        select(StockProblem.id)
        .where(
            StockProblem.marketplace == marketplace,
            StockProblem.source == source,
            StockProblem.detail == detail,
            StockProblem.created_at >= utcnow() - REPORT_QUIET,
        )
        .limit(1)
    )
    if seen.first() is None:
        session.add(StockProblem(marketplace=marketplace, source=source, detail=detail))


async def apply_event(
    session: AsyncSession, event: MarketplaceEvent, marketplaces: Sequence[Marketplace]
) -> tuple[list[StockProduct], list[StockProduct]]:
    """Apply one marketplace event; returns (products changed, products it named).

    Items the marketplace names but we do not know are reported as problems and skipped.
    """
    quantities = await _resolve_lines(session, event)
    if event.kind is EventKind.RETURN:
        moves = await _return_moves(session, event, quantities)
    else:
        moves = await _line_moves(session, event, quantities)
    touched: list[StockProduct] = []
    moved: list[StockProduct] = []
    for sku, (on_hand, reserved) in sorted(moves.items()):
        product = await lock_product(session, sku)
        if product is None:
            continue  # deleted since the line was written: nothing left to count
        touched.append(product)
        if on_hand or reserved:
            _bump(product, on_hand, reserved)
            await queue_pushes(session, product, marketplaces)
            moved.append(product)
    return moved, touched


async def _resolve_lines(session: AsyncSession, event: MarketplaceEvent) -> dict[str, int]:
    """The event's lines as SKU → quantity (an item listed twice is summed)."""
    column = ITEM_COLUMNS[event.marketplace]
    quantities: dict[str, int] = defaultdict(int)
    for line in event.lines:
        key: str | int = line.item
        if event.marketplace is Marketplace.WILDBERRIES:
            if not line.item.isdigit():
                await _unknown(session, event, line.item)
                continue
            key = int(line.item)
        sku = (
            await session.execute(select(StockProduct.sku).where(column == key))
        ).scalar_one_or_none()
        if sku is None:
            await _unknown(session, event, line.item)
            continue
        quantities[sku] += line.quantity
    return dict(quantities)


async def _unknown(session: AsyncSession, event: MarketplaceEvent, item: str) -> None:
    await report_problem(
        session,
        event.marketplace.value,
        f"{event.kind.value}s",
        f"order {event.order_id}: unknown item {item!r} (no product maps to it)",
    )


async def _order_lines(session: AsyncSession, event: MarketplaceEvent) -> list[StockOrderLine]:
    result = await session.execute(
        select(StockOrderLine).where(
            StockOrderLine.marketplace == event.marketplace.value,
            StockOrderLine.order_id == event.order_id,
        )
    )
    return list(result.scalars())


async def _line_moves(
    session: AsyncSession, event: MarketplaceEvent, quantities: dict[str, int]
) -> dict[str, tuple[int, int]]:
    known = {line.sku: line for line in await _order_lines(session, event)}
    if not event.lines and event.kind is EventKind.CANCEL:
        # A cancellation that names only the order (Wildberries): every line of it.
        quantities = {sku: line.quantity for sku, line in known.items()}
    moves: dict[str, tuple[int, int]] = {}
    for sku, quantity in quantities.items():
        line = known.get(sku)
        state = LineState(line.state) if line is not None else None
        movement = move_line(state, event.kind, line.quantity if line else quantity)
        if movement.state is None or movement.state == state:
            continue
        if line is None:
            session.add(
                StockOrderLine(
                    marketplace=event.marketplace.value,
                    order_id=event.order_id,
                    sku=sku,
                    quantity=quantity,
                    state=movement.state.value,
                    ref=event.ref,
                    updated_at=utcnow(),
                )
            )
        else:
            line.state, line.updated_at = movement.state.value, utcnow()
        moves[sku] = (movement.on_hand, movement.reserved)
    return moves


async def _return_moves(
    session: AsyncSession, event: MarketplaceEvent, quantities: dict[str, int]
) -> dict[str, tuple[int, int]]:
    if not event.lines:
        # A claim that names only the order: what we counted as sold in it comes back.
        quantities = {
            line.sku: line.quantity
            for line in await _order_lines(session, event)
            if line.state == LineState.ORDERED
        }
        if not quantities:
            await report_problem(
                session,
                event.marketplace.value,
                "returns",
                f"return {event.return_id}: order {event.order_id} has no sold line we know",
            )
    return_id = event.return_id or event.order_id
    moves: dict[str, tuple[int, int]] = {}
    for sku, quantity in quantities.items():
        key = (event.marketplace.value, return_id, sku)
        if await session.get(StockReturn, key) is not None:
            continue  # seen by an earlier poll
        session.add(
            StockReturn(
                marketplace=event.marketplace.value,
                return_id=return_id,
                sku=sku,
                quantity=quantity,
                created_at=utcnow(),
            )
        )
        moves[sku] = (quantity, 0)
    return moves
