"""Wildberries marketplace API: stock push (``PUT /api/v3/stocks/{warehouseId}``), FBS orders,
their statuses (for cancellations) and buyers' return claims."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from clients.marketplaces.base import (
    MalformedResponse,
    MarketplaceClient,
    PushOutcome,
    Refused,
    RetryPolicy,
)
from clients.marketplaces.feeds import FeedPage
from clients.marketplaces.limits import SlidingWindow
from schemas.stock import EventKind, EventLine, Marketplace, MarketplaceEvent

PAGE = 1000
CLAIMS_PAGE = 200
# Statuses in which an assembly task will not be shipped: its stock is free again.
CANCELLED_WB = frozenset({"canceled", "canceled_by_client", "declined_by_client", "defect"})
CANCELLED_SUPPLIER = frozenset({"cancel"})


@dataclass(frozen=True)
class WbStock:
    sku: str
    chrt_id: int
    warehouse_id: int
    amount: int


@dataclass(frozen=True)
class OpenOrder:
    """A Wildberries order the ledger counts as sold: its rid and numeric id."""

    rid: str
    id: int


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Conflict(_Lenient):
    code: str = ""
    message: str = ""
    data: list[dict[str, object]] | None = None


class _Order(_Lenient):
    id: int
    rid: str
    chrtId: int  # noqa: N815  (Wildberries' field name)


class _Status(_Lenient):
    id: int
    supplierStatus: str = ""  # noqa: N815
    wbStatus: str = ""  # noqa: N815


class _Claim(_Lenient):
    id: str
    srid: str
    dt: AwareDatetime


class WildberriesClient(MarketplaceClient):
    name = Marketplace.WILDBERRIES.value

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        window: SlidingWindow,
        conflict_cost: int,
        retry: RetryPolicy,
    ) -> None:
        super().__init__(session, base_url, {"Authorization": token}, retry)
        # One budget for the marketplace methods as a whole (300 a minute): pushes and reads.
        self.window = window
        self.conflict_cost = conflict_cost

    async def push_stocks(self, warehouse_id: int, items: Sequence[WbStock]) -> PushOutcome:
        """One warehouse's items; a 409 names the refused items, the rest go again later."""
        by_chrt = {i.chrt_id: i for i in items}
        answer = await self.request(
            "PUT",
            f"/api/v3/stocks/{warehouse_id}",
            limiter=self.window,
            json_body={"stocks": [{"chrtId": i.chrt_id, "amount": i.amount} for i in items]},
            costs={409: self.conflict_cost},
        )
        if answer.status == 204:
            return PushOutcome(accepted=[i.sku for i in items])
        if answer.status != 409:
            raise Refused(answer.status, answer.body)
        try:
            conflicts = [_Conflict.model_validate(c) for c in answer.json()]
        except (ValidationError, TypeError) as error:
            raise MalformedResponse(f"wildberries 409 body: {error}") from None
        outcome = PushOutcome()
        for conflict in conflicts:
            for entry in conflict.data or []:
                chrt_id = entry.get("chrtId")
                item = by_chrt.pop(chrt_id, None) if isinstance(chrt_id, int) else None
                if item is not None:
                    outcome.refused[item.sku] = f"{conflict.code}: {conflict.message}"
        # Wildberries applies none of a request it answers 409 to.
        outcome.later += [i.sku for i in by_chrt.values()]
        return outcome

    async def orders(self, since: datetime, until: datetime) -> FeedPage:
        """Assembly tasks created in [since, until]; each is one unit of one chrtId."""
        page = FeedPage()
        cursor = 0
        while True:
            params = {
                "limit": str(PAGE),
                "next": str(cursor),
                "dateFrom": str(int(since.timestamp())),
                "dateTo": str(int(until.timestamp()) + 1),
            }
            answer = await self.request("GET", "/api/v3/orders", limiter=self.window, params=params)
            data = _object(answer.status, answer.json())
            raw, cursor_next = data.get("orders"), data.get("next")
            if not isinstance(raw, list) or not isinstance(cursor_next, int):
                raise MalformedResponse("wildberries orders: no orders list or next cursor")
            for entry in raw:
                page.add(_order_event(entry))
            if len(raw) < PAGE or cursor_next == cursor:
                return page
            cursor = cursor_next

    async def cancellations(self, open_orders: Sequence[OpenOrder]) -> FeedPage:
        """Of these orders, the ones Wildberries or the buyer cancelled."""
        page = FeedPage()
        if not open_orders:
            return page
        by_id = {o.id: o for o in open_orders}
        answer = await self.request(
            "POST",
            "/api/v3/orders/status",
            limiter=self.window,
            json_body={"orders": list(by_id)},
        )
        raw = _object(answer.status, answer.json()).get("orders")
        if not isinstance(raw, list):
            raise MalformedResponse("wildberries order statuses: orders is not a list")
        for entry in raw:
            try:
                status = _Status.model_validate(entry)
            except ValidationError:
                page.problems.append(f"malformed order status: {str(entry)[:200]}")
                continue
            order = by_id.get(status.id)
            if order is None:
                page.problems.append(f"status of an order we did not ask about: {status.id}")
            elif status.wbStatus in CANCELLED_WB or status.supplierStatus in CANCELLED_SUPPLIER:
                # The rid and id are ours (from the ledger), so the event is valid.
                page.events.append(
                    MarketplaceEvent(
                        marketplace=Marketplace.WILDBERRIES,
                        kind=EventKind.CANCEL,
                        order_id=order.rid,
                        ref=str(order.id),
                    )
                )
        return page

    async def returns(self, since: datetime, until: datetime) -> FeedPage:
        """Buyers' claims filed in [since, until] (newest first; read until older)."""
        page = FeedPage()
        offset = 0
        while True:
            params = {"is_archive": "false", "limit": str(CLAIMS_PAGE), "offset": str(offset)}
            answer = await self.request("GET", "/api/v1/claims", limiter=self.window, params=params)
            raw = _object(answer.status, answer.json()).get("claims")
            if not isinstance(raw, list):
                raise MalformedResponse("wildberries claims: claims is not a list")
            older = False
            for entry in raw:
                try:
                    claim = _Claim.model_validate(entry)
                except ValidationError:
                    page.problems.append(f"malformed claim: {str(entry)[:200]}")
                    continue
                if claim.dt < since:
                    older = True
                elif claim.dt <= until:
                    page.add(_claim_event(claim))
            if older or len(raw) < CLAIMS_PAGE:
                return page
            offset += len(raw)


def _object(status: int, body: object) -> dict[str, object]:
    if status != 200:
        raise MalformedResponse(f"wildberries answered HTTP {status}: {str(body)[:300]}")
    if not isinstance(body, dict):
        raise MalformedResponse("wildberries answer is not a JSON object")
    return body


def _order_event(entry: object) -> MarketplaceEvent | str:
    try:
        order = _Order.model_validate(entry)
        return MarketplaceEvent(
            marketplace=Marketplace.WILDBERRIES,
            kind=EventKind.ORDER,
            order_id=order.rid,
            ref=str(order.id),
            lines=[EventLine(item=str(order.chrtId), quantity=1)],
        )
    except ValidationError as error:
        return f"malformed order: {error.errors()[0]['msg']}: {str(entry)[:200]}"


def _claim_event(claim: _Claim) -> MarketplaceEvent | str:
    try:
        return MarketplaceEvent(
            marketplace=Marketplace.WILDBERRIES,
            kind=EventKind.RETURN,
            order_id=claim.srid,
            return_id=claim.id,
        )
    except ValidationError as error:
        return f"claim {claim.id[:100]}: {error.errors()[0]['msg']}"
