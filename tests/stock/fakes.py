"""Fake Ozon, Wildberries and Yandex Market: the stock endpoints and the feeds the pollers read
(orders, statuses, returns), with the real request and answer shapes and limits. Each refuses
(and counts) a request that breaks a limit, so a test proves the clients keep them.

A test places orders and returns with the ``*_order``/``*_return`` helpers; ``down`` makes
every endpoint answer 503, and ``malformed`` names feeds that answer a body no client can read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from workmesh.stock.settings import StockSettings


class Window:
    """The server's count: at most ``limit`` costs in any ``window`` seconds of arrivals."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.arrivals: deque[float] = deque()

    def admit(self, now: float) -> bool:
        while self.arrivals and self.arrivals[0] <= now - self.window:
            self.arrivals.popleft()
        if len(self.arrivals) >= self.limit:
            return False
        self.arrivals.append(now)
        return True

    def charge(self, now: float, extra: int) -> None:
        self.arrivals.extend([now] * extra)


class FakeMarketplaces:
    def __init__(
        self,
        *,
        ozon_requests: int = 80,
        ozon_window: float = 60.0,
        ozon_item_interval: float = 30.0,
        wb_requests: int = 300,
        wb_window: float = 60.0,
        ym_parallel: int = 4,
        latency: float = 0.0,
        ym_latency: float | None = None,
    ) -> None:
        self.ozon = Window(ozon_requests, ozon_window)
        self.ozon_item_interval = ozon_item_interval
        self.ozon_last: dict[tuple[str, int], float] = {}
        self.wb = Window(wb_requests, wb_window)
        self.ym_parallel, self.ym_in_flight = ym_parallel, 0
        self.latency = latency
        self.ym_latency = ym_latency  # Yandex's own answer time; None: ``latency``
        self.violations: list[str] = []
        self.down = False
        self.unknown: set[str] = set()  # item keys every marketplace refuses
        # What each marketplace shows now, and how many times each item was set.
        self.stock: dict[str, dict[str, int]] = {"ozon": {}, "wildberries": {}, "yandex": {}}
        self.writes: dict[str, dict[str, int]] = {"ozon": {}, "wildberries": {}, "yandex": {}}
        self.requests: dict[str, int] = {"ozon": 0, "wildberries": 0, "yandex": 0}
        # Ozon's product_id for each offer it was sent (it answers with it), and the
        # product_id each push named (0 when the client sent only the offer_id).
        self.ozon_product_ids: dict[str, int] = {}
        self.ozon_sent_product_id: dict[str, int] = {}
        # The feeds the pollers read; "_at" keys are the fake's own bookkeeping.
        self.ozon_reads = Window(ozon_requests, ozon_window)
        self.ozon_postings: dict[str, dict[str, Any]] = {}
        self.ozon_returns: list[dict[str, Any]] = []
        self.wb_orders: list[dict[str, Any]] = []
        self.wb_statuses: dict[int, dict[str, str]] = {}
        self.wb_claims: list[dict[str, Any]] = []
        self.ym_orders: dict[int, dict[int, dict[str, Any]]] = {}
        self.ym_returns: dict[int, list[dict[str, Any]]] = {}
        self.malformed: set[str] = set()  # e.g. {"ozon.postings"}: that feed answers garbage
        self.refused_down = 0  # requests answered 503 while down
        self.reads: dict[str, int] = {}  # feed → requests served
        self._ids = itertools.count(1001)
        self.app = web.Application(middlewares=[_credentials])
        self.app.router.add_post("/v2/products/stocks", self._ozon)
        self.app.router.add_put("/api/v3/stocks/{warehouse}", self._wb)
        self.app.router.add_put("/v2/campaigns/{campaign}/offers/stocks", self._ym)
        self.app.router.add_post("/v3/posting/fbs/list", self._ozon_postings)
        self.app.router.add_post("/v1/returns/list", self._ozon_returns)
        self.app.router.add_get("/api/v3/orders", self._wb_orders)
        self.app.router.add_post("/api/v3/orders/status", self._wb_status)
        self.app.router.add_get("/api/v1/claims", self._wb_claims)
        self.app.router.add_get("/v2/campaigns/{campaign}/orders", self._ym_orders)
        self.app.router.add_get("/v2/campaigns/{campaign}/returns", self._ym_returns)

    def _set(self, marketplace: str, key: str, value: int) -> None:
        self.stock[marketplace][key] = value
        self.writes[marketplace][key] = self.writes[marketplace].get(key, 0) + 1

    async def _ozon(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        if self.down:
            self.refused_down += 1
            return web.json_response({"message": "down"}, status=503)
        if not self.ozon.admit(now):
            self.violations.append("ozon: more than the allowed requests in the window")
            return web.json_response({"message": "rate limit"}, status=429)
        self.requests["ozon"] += 1
        body = await request.json()
        stocks = body["stocks"]
        if len(stocks) > 100:
            self.violations.append("ozon: more than 100 items")
            return web.json_response({"message": "too many items"}, status=400)
        result: list[dict[str, Any]] = []
        for s in stocks:
            key = (s["offer_id"], s["warehouse_id"])
            self.ozon_sent_product_id[s["offer_id"]] = s.get("product_id", 0)
            product_id = self.ozon_product_ids.setdefault(s["offer_id"], next(self._ids))
            entry = {
                "offer_id": s["offer_id"],
                "product_id": product_id,
                "warehouse_id": s["warehouse_id"],
                "updated": False,
                "errors": [],
            }
            last = self.ozon_last.get(key)
            if s["offer_id"] in self.unknown:
                entry["errors"] = [{"code": "NOT_FOUND", "message": "offer not found"}]
            elif last is not None and now - last < self.ozon_item_interval:
                self.violations.append(f"ozon: {key} updated again within the interval")
                entry["errors"] = [{"code": "TOO_MANY_REQUESTS", "message": "too soon"}]
            else:
                self.ozon_last[key] = now
                self._set("ozon", s["offer_id"], s["stock"])
                entry["updated"] = True
            result.append(entry)
        await _answer_at(now + self.latency)
        return web.json_response({"result": result})

    async def _wb(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        if self.down:
            self.refused_down += 1
            return web.json_response({"message": "down"}, status=503)
        if not self.wb.admit(now):
            self.violations.append("wildberries: more than the allowed requests in the window")
            return web.json_response({"message": "rate limit"}, status=429)
        self.requests["wildberries"] += 1
        stocks = (await request.json())["stocks"]
        if len(stocks) > 1000:
            self.violations.append("wildberries: more than 1000 items")
            return web.json_response({"message": "too many items"}, status=400)
        bad = [s for s in stocks if str(s["chrtId"]) in self.unknown]
        if not bad:
            for s in stocks:
                self._set("wildberries", str(s["chrtId"]), s["amount"])
        # The answer time includes the work above, as a real marketplace's does.
        await _answer_at(now + self.latency)
        if bad:
            self.wb.charge(now, 9)  # a 409 costs ten requests of the limit
            return web.json_response(
                [{"code": "NotFound", "message": "no such chrtId", "data": bad}], status=409
            )
        return web.Response(status=204)

    async def _ym(self, request: web.Request) -> web.Response:
        started = asyncio.get_running_loop().time()
        if self.down:
            self.refused_down += 1
            return web.json_response({"status": "ERROR"}, status=503)
        if self.ym_in_flight >= self.ym_parallel:
            self.violations.append("yandex: more requests in parallel than allowed")
            return web.json_response({"status": "ERROR"}, status=420)
        self.ym_in_flight += 1
        try:
            self.requests["yandex"] += 1
            skus = (await request.json())["skus"]
            answer: tuple[dict[str, Any], int] = ({"status": "OK"}, 200)
            if len(skus) > 2000:
                self.violations.append("yandex: more than 2000 SKUs")
                answer = ({"status": "ERROR"}, 400)
            elif any(s["sku"] in self.unknown for s in skus):
                error = {"code": "BAD_REQUEST", "message": "sku"}
                answer = ({"status": "ERROR", "errors": [error]}, 400)
            else:
                for s in skus:
                    self._set("yandex", s["sku"], s["items"][0]["count"])
            # The answer time includes the work above, as a real marketplace's does.
            await _answer_at(
                started + (self.latency if self.ym_latency is None else self.ym_latency)
            )
            return web.json_response(answer[0], status=answer[1])
        finally:
            self.ym_in_flight -= 1

    # --- what happens on the marketplaces (called by tests) ------------------------------------

    def ozon_order(self, number: str, status: str, lines: list[tuple[str, int]]) -> None:
        """A new FBS posting, or a status change of one (Ozon lists it by that change)."""
        now = _now()
        self.ozon_postings[number] = {
            "posting_number": number,
            "order_id": next(self._ids),
            "status": status,
            "in_process_at": _iso(now),
            "products": [
                {"offer_id": offer, "quantity": quantity, "sku": next(self._ids), "name": ""}
                for offer, quantity in lines
            ],
            "_at": now,
        }

    def ozon_return(self, posting: str, offer_id: str, quantity: int) -> int:
        now, return_id = _now(), next(self._ids)
        self.ozon_returns.append({
            "id": return_id,
            "posting_number": posting,
            "product": {"offer_id": offer_id, "quantity": quantity, "sku": 1, "name": ""},
            "logistic": {"return_date": _iso(now)},
            "_at": now,
        })  # fmt: skip
        return return_id

    def wb_order(self, rid: str, chrt_id: int) -> int:
        """A new assembly task (one unit of one chrtId); returns its numeric id."""
        now, order_id = _now(), next(self._ids)
        self.wb_orders.append({"id": order_id, "rid": rid, "chrtId": chrt_id,
                               "createdAt": _iso(now), "_at": now})  # fmt: skip
        self.wb_statuses[order_id] = {"supplierStatus": "new", "wbStatus": "waiting"}
        return order_id

    def wb_cancel(self, order_id: int) -> None:
        self.wb_statuses[order_id] = {"supplierStatus": "new", "wbStatus": "canceled_by_client"}

    def wb_claim(self, rid: str) -> str:
        now, claim_id = _now(), f"claim-{next(self._ids)}"
        self.wb_claims.insert(0, {"id": claim_id, "srid": rid, "dt": _iso(now), "_at": now})
        return claim_id

    def ym_order(
        self, campaign: int, order_id: int, status: str, lines: list[tuple[str, int]]
    ) -> None:
        now = _now()
        self.ym_orders.setdefault(campaign, {})[order_id] = {
            "id": order_id,
            "status": status,
            "updatedAt": _iso(now),
            "items": [{"offerId": sku, "count": count} for sku, count in lines],
            "_at": now,
        }

    def ym_return(self, campaign: int, order_id: int, lines: list[tuple[str, int]]) -> int:
        now, return_id = _now(), next(self._ids)
        self.ym_returns.setdefault(campaign, []).append({
            "id": return_id,
            "orderId": order_id,
            "creationDate": _iso(now),
            "items": [{"shopSku": sku, "count": count} for sku, count in lines],
            "_at": now,
        })  # fmt: skip
        return return_id

    # --- the feeds -------------------------------------------------------------------------

    def _read_gate(self, feed: str, window: Window | None) -> web.Response | None:
        """Down, over the limit or told to be malformed: the answer; else None (go on)."""
        if self.down:
            self.refused_down += 1
            return web.json_response({"message": "down"}, status=503)
        if window is not None and not window.admit(asyncio.get_running_loop().time()):
            self.violations.append(f"{feed}: more than the allowed requests in the window")
            return web.json_response({"message": "rate limit"}, status=429)
        self.reads[feed] = self.reads.get(feed, 0) + 1
        if feed in self.malformed:
            return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
        return None

    def _too_many(self, feed: str, limit: int, most: int) -> web.Response | None:
        if 1 <= limit <= most:
            return None
        self.violations.append(f"{feed}: limit {limit} outside 1..{most}")
        return web.json_response({"message": "bad limit"}, status=400)

    async def _ozon_postings(self, request: web.Request) -> web.Response:
        if (refusal := self._read_gate("ozon.postings", self.ozon_reads)) is not None:
            return refusal
        body = await request.json()
        changed = body["filter"]["last_changed_status_date"]
        since, until = _parse(changed["from"]), _parse(changed["to"])
        limit, offset = int(body["limit"]), int(body["offset"])
        if (refusal := self._too_many("ozon.postings", limit, 1000)) is not None:
            return refusal
        hits = sorted(
            (p for p in self.ozon_postings.values() if since <= p["_at"] <= until),
            key=lambda p: p["_at"],
        )
        page = hits[offset : offset + limit]
        return web.json_response(
            {"result": {"postings": [_public(p) for p in page],
                        "has_next": offset + limit < len(hits)}}
        )  # fmt: skip

    async def _ozon_returns(self, request: web.Request) -> web.Response:
        if (refusal := self._read_gate("ozon.returns", self.ozon_reads)) is not None:
            return refusal
        body = await request.json()
        period = body["filter"]["logistic_return_date"]
        since, until = _parse(period["time_from"]), _parse(period["time_to"])
        limit, last_id = int(body["limit"]), int(body.get("last_id", 0))
        if (refusal := self._too_many("ozon.returns", limit, 500)) is not None:
            return refusal
        hits = [r for r in self.ozon_returns if since <= r["_at"] <= until and r["id"] > last_id]
        hits.sort(key=lambda r: r["id"])
        return web.json_response(
            {"returns": [_public(r) for r in hits[:limit]], "has_next": len(hits) > limit}
        )

    async def _wb_orders(self, request: web.Request) -> web.Response:
        if (refusal := self._read_gate("wildberries.orders", self.wb)) is not None:
            return refusal
        query = request.query
        limit, offset = int(query["limit"]), int(query["next"])
        if (refusal := self._too_many("wildberries.orders", limit, 1000)) is not None:
            return refusal
        since, until = int(query["dateFrom"]), int(query["dateTo"])
        hits = [o for o in self.wb_orders if since <= o["_at"].timestamp() <= until]
        page = hits[offset : offset + limit]
        return web.json_response({"next": offset + len(page), "orders": [_public(o) for o in page]})

    async def _wb_status(self, request: web.Request) -> web.Response:
        if (refusal := self._read_gate("wildberries.status", self.wb)) is not None:
            return refusal
        ids = (await request.json())["orders"]
        if (refusal := self._too_many("wildberries.status", len(ids), 1000)) is not None:
            return refusal
        return web.json_response(
            {"orders": [{"id": i, **self.wb_statuses[i]} for i in ids if i in self.wb_statuses]}
        )

    async def _wb_claims(self, request: web.Request) -> web.Response:
        if (refusal := self._read_gate("wildberries.claims", self.wb)) is not None:
            return refusal
        limit, offset = int(request.query["limit"]), int(request.query.get("offset", "0"))
        if (refusal := self._too_many("wildberries.claims", limit, 200)) is not None:
            return refusal
        page = self.wb_claims[offset : offset + limit]
        return web.json_response(
            {"claims": [_public(c) for c in page], "total": len(self.wb_claims)}
        )

    async def _ym_read(self, feed: str, answer: Any) -> web.Response:
        """Yandex counts reads among its four requests in flight, like pushes."""
        if (refusal := self._read_gate(feed, None)) is not None:
            return refusal
        if self.ym_in_flight >= self.ym_parallel:
            self.violations.append("yandex: more requests in parallel than allowed")
            return web.json_response({"status": "ERROR"}, status=420)
        self.ym_in_flight += 1
        try:
            await asyncio.sleep(self.latency)
            return web.json_response(answer)
        finally:
            self.ym_in_flight -= 1

    async def _ym_orders(self, request: web.Request) -> web.Response:
        query = request.query
        limit, offset = int(query["limit"]), int(query.get("page_token", "0"))
        if (refusal := self._too_many("yandex.orders", limit, 50)) is not None:
            return refusal
        since, until = _parse(query["updatedAtFrom"]), _parse(query["updatedAtTo"])
        orders = self.ym_orders.get(int(request.match_info["campaign"]), {}).values()
        hits = sorted((o for o in orders if since <= o["_at"] <= until), key=lambda o: o["_at"])
        page = hits[offset : offset + limit]
        paging = {"nextPageToken": str(offset + limit)} if offset + limit < len(hits) else {}
        return await self._ym_read(
            "yandex.orders", {"orders": [_public(o) for o in page], "paging": paging}
        )

    async def _ym_returns(self, request: web.Request) -> web.Response:
        query = request.query
        limit, offset = int(query["limit"]), int(query.get("page_token", "0"))
        if (refusal := self._too_many("yandex.returns", limit, 500)) is not None:
            return refusal
        since, until = query["fromDate"], query["toDate"]
        returns = self.ym_returns.get(int(request.match_info["campaign"]), [])
        hits = [r for r in returns if since <= r["_at"].date().isoformat() <= until]
        page = hits[offset : offset + limit]
        paging = {"nextPageToken": str(offset + limit)} if offset + limit < len(hits) else {}
        return await self._ym_read(
            "yandex.returns",
            {"status": "OK", "result": {"paging": paging,
                                        "returns": [_public(r) for r in page]}},
        )  # fmt: skip


def _now() -> datetime:
    """The marketplaces keep times to the millisecond."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if not k.startswith("_")}


# The headers each marketplace refuses a request without (401), by path.
_AUTH = (
    ("/api/v", ("Authorization",)),  # Wildberries
    ("/v2/campaigns/", ("Api-Key",)),  # Yandex Market
    ("/", ("Client-Id", "Api-Key")),  # Ozon
)


async def _answer_at(moment: float) -> None:
    """Answer at ``moment``: a push answers ``latency`` seconds after it arrived, whatever
    the fake's own work on it took (a real marketplace's answer time includes its work)."""
    await asyncio.sleep(max(0.0, moment - asyncio.get_running_loop().time()))


@web.middleware
async def _credentials(request: web.Request, handler: Any) -> web.StreamResponse:
    needed = next(headers for prefix, headers in _AUTH if request.path.startswith(prefix))
    missing = [h for h in needed if not request.headers.get(h)]
    if missing:
        return web.json_response(
            {"code": 16, "message": f"missing {', '.join(missing)}"}, status=401
        )
    response: web.StreamResponse = await handler(request)
    return response


def settings_for(base: str, **overrides: Any) -> StockSettings:
    """Stock settings that talk to the fakes at ``base``: every marketplace, with credentials."""
    return StockSettings(
        **{
            "marketplaces": ["ozon", "wildberries", "yandex"],
            "ozon_url": base, "ozon_client_id": "fake-client", "ozon_api_key": "fake-key",
            "wb_url": base, "wb_token": "fake-token",
            "ym_url": base, "ym_token": "fake-token",
            **overrides,
        }
    )  # fmt: skip
