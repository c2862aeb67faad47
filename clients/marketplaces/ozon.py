"""Ozon Seller API: stock push (``POST /v2/products/stocks``), FBS postings and returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from clients.marketplaces.base import (
    MalformedResponse,
    MarketplaceClient,
    PushOutcome,
    Refused,
    RetryPolicy,
)
from clients.marketplaces.feeds import FeedPage, iso
from clients.marketplaces.limits import SlidingWindow
from schemas.stock import EventKind, EventLine, Marketplace, MarketplaceEvent

# Posting statuses by what they mean for stock. A posting waiting for registration or
# approval holds stock but may still fall through: a reserve.
_KINDS = {
    "awaiting_registration": EventKind.RESERVE,
    "acceptance_in_progress": EventKind.RESERVE,
    "awaiting_approve": EventKind.RESERVE,
    "awaiting_packaging": EventKind.ORDER,
    "awaiting_deliver": EventKind.ORDER,
    "sent_by_seller": EventKind.ORDER,
    "driver_pickup": EventKind.ORDER,
    "delivering": EventKind.ORDER,
    "delivered": EventKind.ORDER,
    "arbitration": EventKind.ORDER,
    "client_arbitration": EventKind.ORDER,
    "cancelled": EventKind.CANCEL,
    "not_accepted": EventKind.CANCEL,
}
# Ozon's per-item answer when the item was updated less than 30 s ago: fine later.
_TOO_SOON = "TOO_MANY_REQUESTS"
PAGE = 1000
RETURNS_PAGE = 500


@dataclass(frozen=True)
class OzonStock:
    sku: str
    offer_id: str
    product_id: int | None
    warehouse_id: int
    stock: int


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ItemError(_Lenient):
    code: str = ""
    message: str = ""


class _ItemResult(_Lenient):
    offer_id: str = ""
    product_id: int | None = None
    warehouse_id: int | None = None
    updated: bool
    errors: list[_ItemError] = []


class _StocksAnswer(_Lenient):
    result: list[_ItemResult]


class _PostingProduct(_Lenient):
    offer_id: str
    quantity: int


class _Posting(_Lenient):
    posting_number: str
    status: str
    products: list[_PostingProduct]


class _ReturnProduct(_Lenient):
    offer_id: str
    quantity: int


class _Return(_Lenient):
    id: int
    posting_number: str
    product: _ReturnProduct


class OzonClient(MarketplaceClient):
    name = Marketplace.OZON.value

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        client_id: str,
        api_key: str,
        window: SlidingWindow,
        retry: RetryPolicy,
    ) -> None:
        super().__init__(session, base_url, {"Client-Id": client_id, "Api-Key": api_key}, retry)
        self.window = window  # POST /v2/products/stocks: 80 requests a minute
        # Reads have limits of their own; kept apart so polling never eats the push budget.
        self.reads = SlidingWindow(window.limit, window.window)

    async def push_stocks(self, items: Sequence[OzonStock]) -> PushOutcome:
        by_key = {(i.offer_id, i.warehouse_id): i for i in items}
        stocks = [
            {
                "offer_id": i.offer_id,
                **({"product_id": i.product_id} if i.product_id else {}),
                "stock": i.stock,
                "warehouse_id": i.warehouse_id,
            }
            for i in items
        ]
        answer = await self.request(
            "POST", "/v2/products/stocks", limiter=self.window, json_body={"stocks": stocks}
        )
        if answer.status != 200:
            raise Refused(answer.status, answer.body)
        try:
            parsed = _StocksAnswer.model_validate(answer.json())
        except ValidationError as error:
            raise MalformedResponse(f"ozon stocks answer: {error}") from None
        outcome = PushOutcome()
        for result in parsed.result:
            item = by_key.pop((result.offer_id, result.warehouse_id or 0), None)
            if item is None:
                continue  # an answer about something we did not send: nothing to record
            if result.product_id:
                outcome.ids[item.sku] = result.product_id
            codes = {e.code for e in result.errors}
            if result.updated:
                outcome.accepted.append(item.sku)
            elif codes == {_TOO_SOON}:
                outcome.later.append(item.sku)
            else:
                outcome.refused[item.sku] = (
                    "; ".join(f"{e.code}: {e.message}" for e in result.errors) or "not updated"
                )
        # Items the answer left out were not confirmed: send them again.
        outcome.later += [i.sku for i in by_key.values()]
        return outcome

    async def postings(self, since: datetime, until: datetime) -> FeedPage:
        """FBS postings whose status changed in [since, until], as stock events."""
        page = FeedPage()
        offset = 0
        while True:
            body = {
                "dir": "ASC",
                "filter": {"last_changed_status_date": {"from": iso(since), "to": iso(until)}},
                "limit": PAGE,
                "offset": offset,
                "with": {},
            }
            answer = await self.request(
                "POST", "/v3/posting/fbs/list", limiter=self.reads, json_body=body
            )
            data = _expect_ok(answer.status, answer.json(), "result")
            raw = data.get("postings") if isinstance(data, dict) else None
            if not isinstance(raw, list):
                raise MalformedResponse("ozon postings: result.postings is not a list")
            for entry in raw:
                page.add(_posting_event(entry))
            if not data.get("has_next") or not raw:
                return page
            offset += len(raw)

    async def returns(self, since: datetime, until: datetime) -> FeedPage:
        page = FeedPage()
        last_id = 0
        while True:
            body = {
                "filter": {
                    "logistic_return_date": {"time_from": iso(since), "time_to": iso(until)}
                },
                "limit": RETURNS_PAGE,
                "last_id": last_id,
            }
            answer = await self.request(
                "POST", "/v1/returns/list", limiter=self.reads, json_body=body
            )
            data = _expect_ok(answer.status, answer.json(), None)
            raw = data.get("returns")
            if not isinstance(raw, list):
                raise MalformedResponse("ozon returns: returns is not a list")
            for entry in raw:
                page.add(_return_event(entry))
            ids = [e.get("id") for e in raw if isinstance(e, dict)]
            if not data.get("has_next") or not ids or not isinstance(ids[-1], int):
                return page
            last_id = ids[-1]


def _expect_ok(status: int, body: object, key: str | None) -> dict[str, object]:
    if status != 200:
        raise MalformedResponse(f"ozon answered HTTP {status}: {str(body)[:300]}")
    if not isinstance(body, dict):
        raise MalformedResponse("ozon answer is not a JSON object")
    inner = body.get(key) if key else body
    if not isinstance(inner, dict):
        raise MalformedResponse(f"ozon answer has no object {key!r}")
    return inner


def _posting_event(entry: object) -> MarketplaceEvent | str:
    try:
        posting = _Posting.model_validate(entry)
    except ValidationError as error:
        return f"malformed posting: {error.errors()[0]['msg']}: {str(entry)[:200]}"
    kind = _KINDS.get(posting.status)
    if kind is None:
        return f"posting {posting.posting_number}: unknown status {posting.status!r}"
    try:
        return MarketplaceEvent(
            marketplace=Marketplace.OZON,
            kind=kind,
            order_id=posting.posting_number,
            lines=[EventLine(item=p.offer_id, quantity=p.quantity) for p in posting.products],
        )
    except ValidationError as error:
        return f"posting {posting.posting_number}: {error.errors()[0]['msg']}"


def _return_event(entry: object) -> MarketplaceEvent | str:
    try:
        ret = _Return.model_validate(entry)
        return MarketplaceEvent(
            marketplace=Marketplace.OZON,
            kind=EventKind.RETURN,
            order_id=ret.posting_number,
            return_id=str(ret.id),
            lines=[EventLine(item=ret.product.offer_id, quantity=ret.product.quantity)],
        )
    except ValidationError as error:
        return f"malformed return: {error.errors()[0]['msg']}: {str(entry)[:200]}"
