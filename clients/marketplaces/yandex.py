"""Yandex Market partner API: stock push (``PUT /v2/campaigns/{campaignId}/offers/stocks``),
a campaign's orders and its returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

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
from clients.marketplaces.limits import InFlight
from schemas.stock import EventKind, EventLine, Marketplace, MarketplaceEvent

ORDERS_PAGE = 50
RETURNS_PAGE = 500
_KINDS = {
    "RESERVED": EventKind.RESERVE,
    "PENDING": EventKind.RESERVE,
    "UNPAID": EventKind.ORDER,
    "PROCESSING": EventKind.ORDER,
    "DELIVERY": EventKind.ORDER,
    "PICKUP": EventKind.ORDER,
    "DELIVERED": EventKind.ORDER,
    "CANCELLED": EventKind.CANCEL,
}


@dataclass(frozen=True)
class YmStock:
    sku: str
    shop_sku: str
    campaign_id: int
    count: int


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _OrderItem(_Lenient):
    offerId: str  # noqa: N815  (Yandex Market's field name)
    count: int


class _Order(_Lenient):
    id: int
    status: str
    items: list[_OrderItem]


class _ReturnItem(_Lenient):
    shopSku: str  # noqa: N815
    count: int


class _Return(_Lenient):
    id: int
    orderId: int  # noqa: N815
    items: list[_ReturnItem]


class YandexClient(MarketplaceClient):
    name = Marketplace.YANDEX.value

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        in_flight: InFlight,
        retry: RetryPolicy,
    ) -> None:
        super().__init__(session, base_url, {"Api-Key": token}, retry)
        self.in_flight = in_flight  # at most four requests at once, reads included

    async def push_stocks(self, campaign_id: int, items: Sequence[YmStock]) -> PushOutcome:
        """One campaign's items; a 400 refuses the whole request (the pusher bisects it)."""
        now = iso(datetime.now(UTC))
        body = {
            "skus": [
                {"sku": i.shop_sku, "items": [{"count": i.count, "updatedAt": now}]} for i in items
            ]
        }
        answer = await self.request(
            "PUT",
            f"/v2/campaigns/{campaign_id}/offers/stocks",
            limiter=self.in_flight,
            json_body=body,
        )
        if answer.status != 200:
            raise Refused(answer.status, answer.body)
        data = answer.json()
        if not isinstance(data, dict) or data.get("status") != "OK":
            raise MalformedResponse(f"yandex stocks answer: {answer.body[:200]!r}")
        return PushOutcome(accepted=[i.sku for i in items])

    async def orders(self, campaign_id: int, since: datetime, until: datetime) -> FeedPage:
        """Orders of one campaign updated in [since, until]."""
        page = FeedPage()
        token: str | None = None
        while True:
            params = {
                "updatedAtFrom": iso(since),
                "updatedAtTo": iso(until),
                "limit": str(ORDERS_PAGE),
                **({"page_token": token} if token else {}),
            }
            answer = await self.request(
                "GET", f"/v2/campaigns/{campaign_id}/orders", limiter=self.in_flight, params=params
            )
            data = _object(answer.status, answer.json())
            raw = data.get("orders")
            if not isinstance(raw, list):
                raise MalformedResponse("yandex orders: orders is not a list")
            for entry in raw:
                page.add(_order_event(entry))
            token = _next_page(data)
            if not token or not raw:
                return page

    async def returns(self, campaign_id: int, since: datetime, until: datetime) -> FeedPage:
        """Returns of one campaign in the days [since, until] (the API filters by date)."""
        page = FeedPage()
        token: str | None = None
        while True:
            params = {
                "fromDate": since.astimezone(UTC).date().isoformat(),
                "toDate": until.astimezone(UTC).date().isoformat(),
                "limit": str(RETURNS_PAGE),
                **({"page_token": token} if token else {}),
            }
            answer = await self.request(
                "GET", f"/v2/campaigns/{campaign_id}/returns", limiter=self.in_flight, params=params
            )
            result = _object(answer.status, answer.json()).get("result")
            if not isinstance(result, dict) or not isinstance(result.get("returns"), list):
                raise MalformedResponse("yandex returns: result.returns is not a list")
            raw = result["returns"]
            for entry in raw:
                page.add(_return_event(entry))
            token = _next_page(result)
            if not token or not raw:
                return page


def _object(status: int, body: object) -> dict[str, object]:
    if status != 200:
        raise MalformedResponse(f"yandex answered HTTP {status}: {str(body)[:300]}")
    if not isinstance(body, dict):
        raise MalformedResponse("yandex answer is not a JSON object")
    return body


def _next_page(data: dict[str, object]) -> str | None:
    paging = data.get("paging")
    token = paging.get("nextPageToken") if isinstance(paging, dict) else None
    return token if isinstance(token, str) and token else None


def _order_event(entry: object) -> MarketplaceEvent | str:
    try:
        order = _Order.model_validate(entry)
    except ValidationError as error:
        return f"malformed order: {error.errors()[0]['msg']}: {str(entry)[:200]}"
    kind = _KINDS.get(order.status)
    if kind is None:
        return f"order {order.id}: unknown status {order.status!r}"
    try:
        return MarketplaceEvent(
            marketplace=Marketplace.YANDEX,
            kind=kind,
            order_id=str(order.id),
            lines=[EventLine(item=i.offerId, quantity=i.count) for i in order.items],
        )
    except ValidationError as error:
        return f"order {order.id}: {error.errors()[0]['msg']}"


def _return_event(entry: object) -> MarketplaceEvent | str:
    try:
        ret = _Return.model_validate(entry)
        return MarketplaceEvent(
            marketplace=Marketplace.YANDEX,
            kind=EventKind.RETURN,
            order_id=str(ret.orderId),
            return_id=str(ret.id),
            lines=[EventLine(item=i.shopSku, quantity=i.count) for i in ret.items],
        )
    except ValidationError as error:
        return f"malformed return: {error.errors()[0]['msg']}: {str(entry)[:200]}"
