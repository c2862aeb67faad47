"""Client-side limits against a server that counts on arrival and refuses a breach."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from clients.marketplaces.base import MarketplaceClient, RetryPolicy, retry_hint
from clients.marketplaces.limits import InFlight, SlidingWindow
from clients.marketplaces.wildberries import WbStock, WildberriesClient
from tests.stock.fakes import FakeMarketplaces, Window, settings_for
from workmesh.stock.settings import StockSettings


async def test_sliding_window_is_never_broken_by_concurrent_callers() -> None:
    server_window = Window(3, 0.3)
    breaches: list[float] = []

    async def handler(_request: web.Request) -> web.Response:
        if not server_window.admit(asyncio.get_running_loop().time()):
            breaches.append(asyncio.get_running_loop().time())
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/x", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        client = MarketplaceClient(http, str(server.make_url("")), {}, RetryPolicy(attempts=1))
        window = SlidingWindow(3, 0.3)
        await asyncio.gather(*(client.request("GET", "/x", limiter=window) for _ in range(12)))
    assert breaches == []


async def test_in_flight_limit_is_never_exceeded() -> None:
    fake = FakeMarketplaces(ym_parallel=2, latency=0.02)
    async with TestServer(fake.app) as server, aiohttp.ClientSession() as http:
        headers = {"Api-Key": "t"}
        client = MarketplaceClient(http, str(server.make_url("")), headers, RetryPolicy(attempts=1))
        limit = InFlight(2)
        body = {"skus": [{"sku": "a", "items": [{"count": 1}]}]}
        await asyncio.gather(
            *(
                client.request("PUT", "/v2/campaigns/1/offers/stocks", limiter=limit,
                               json_body=body)
                for _ in range(10)
            )
        )  # fmt: skip
    assert fake.violations == []
    assert fake.requests["yandex"] == 10


async def test_a_409_costs_ten_requests_on_our_side_too() -> None:
    fake = FakeMarketplaces(wb_requests=12, wb_window=60.0)
    fake.unknown.add("5")
    async with TestServer(fake.app) as server, aiohttp.ClientSession() as http:
        window = SlidingWindow(12, 60.0)
        client = WildberriesClient(
            http, str(server.make_url("")), "t", window, 10, RetryPolicy(attempts=1)
        )
        outcome = await client.push_stocks(1, [WbStock("a", 5, 1, 3), WbStock("b", 6, 1, 4)])
        assert outcome.refused == {"a": "NotFound: no such chrtId"}
        assert outcome.later == ["b"]
        assert window.used() == 10


def test_retry_hints_in_seconds_and_as_dates() -> None:
    assert retry_hint({"Retry-After": "3"}) == 3.0
    assert retry_hint({"X-Ratelimit-Retry": "1.5"}) == 1.5
    assert retry_hint({}) is None
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert retry_hint({"Retry-After": "Thu, 01 Jan 2026 00:00:10 GMT"}, now) == 10.0


def test_a_marketplace_is_called_only_when_named_and_with_its_credentials() -> None:
    # By default none: a mesh without marketplace accounts never calls out
    assert StockSettings().marketplaces == []
    with pytest.raises(ValidationError, match="set WORKMESH_STOCK_OZON_CLIENT_ID and WORKMESH"):
        StockSettings(marketplaces=["ozon"])
    with pytest.raises(ValidationError, match=r"wildberries is in .*: set WORKMESH_STOCK_WB_TOKEN"):
        StockSettings(marketplaces=["wildberries"])
    with pytest.raises(ValidationError, match="Input should be 'ozon', 'wildberries' or 'yandex'"):
        StockSettings(marketplaces=["amazon"])
    assert StockSettings(marketplaces=["yandex"], ym_token="t").marketplaces == ["yandex"]


async def test_the_fakes_refuse_a_request_without_credentials() -> None:
    fake = FakeMarketplaces()
    async with TestServer(fake.app) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        for method, path, headers in (
            ("POST", "/v2/products/stocks", {"Client-Id": "c"}),  # Ozon wants both headers
            ("PUT", "/api/v3/stocks/1", {}),
            ("PUT", "/v2/campaigns/1/offers/stocks", {}),
        ):
            async with http.request(method, base + path, headers=headers, json={}) as answer:
                assert answer.status == 401, path
    assert fake.requests == {"ozon": 0, "wildberries": 0, "yandex": 0}
    assert settings_for("http://x").marketplaces == ["ozon", "wildberries", "yandex"]
