"""Through the real RabbitMQ: a marketplace order reduces stock and the new value reaches all
three fakes; a return brings it back; bad input gets a reason."""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Harness, eventually
from tests.stock.fakes import FakeMarketplaces, settings_for
from workmesh.stock.capability import StockCapability
from workmesh.stock.settings import StockSettings

PRODUCT = {
    "on_hand": 10,
    "ozon_offer_id": "mug-oz",
    "ozon_warehouse_id": 1,
    "wb_chrt_id": 77,
    "wb_warehouse_id": 2,
    "ym_shop_sku": "mug-ym",
    "ym_campaign_id": 3,
}


async def publish_event(amqp_url: str, key: str, body: dict[str, Any]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("workmesh.events")
        await exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            key,
        )  # fmt: skip


@pytest.mark.e2e
async def test_order_then_return_reach_all_three_marketplaces(harness: Harness) -> None:
    fake = FakeMarketplaces(ozon_item_interval=0.2)
    async with TestServer(fake.app) as server:
        base = str(server.make_url("")).rstrip("/")
        settings = settings_for(
            base, ozon_item_interval=0.2,
            push_idle=0.1, push_round=1.0, http_attempts=2, http_max_wait=0.2,
        )  # fmt: skip
        await harness.start("stock", capabilities=[StockCapability(settings)])
        status, body = await harness.api("PUT", "/api/v1/stock/products/mug", json=PRODUCT)
        assert status == 201, body

        def shows(value: int) -> bool:
            return (
                fake.stock["ozon"].get("mug-oz") == value
                and fake.stock["wildberries"].get("77") == value
                and fake.stock["yandex"].get("mug-ym") == value
            )

        await eventually(lambda: shows(10), message="the first stock on all three")
        # When Ozon reports an order for 3 (twice: an overlapping poll)
        order = {"marketplace": "ozon", "kind": "order", "order_id": "p-1",
                 "lines": [{"item": "mug-oz", "quantity": 3}]}  # fmt: skip
        await publish_event(harness.amqp_url, "stock.marketplace.order", order)
        await publish_event(harness.amqp_url, "stock.marketplace.order", order)
        await eventually(lambda: shows(7), message="the order's new stock on all three")
        # When the order comes back
        back = {**order, "kind": "return", "return_id": "r-1"}
        await publish_event(harness.amqp_url, "stock.marketplace.return", back)
        await eventually(lambda: shows(10), message="the returned stock on all three")
        status, body = await harness.api("GET", "/api/v1/stock/products/mug")
        assert (status, body["on_hand"], body["available"]) == (200, 10, 10)
        assert fake.violations == []


@pytest.mark.e2e
async def test_bad_requests_get_a_reason(harness: Harness) -> None:
    await harness.start("stock", capabilities=[StockCapability(StockSettings(marketplaces=[]))])
    status, body = await harness.api("POST", "/api/v1/stock/products/nope/stock",
                                     json={"on_hand": 1})  # fmt: skip
    assert (status, body["error"]) == (404, "no such product")
    status, body = await harness.api("PUT", "/api/v1/stock/products/x", json={"on_hand": -1})
    assert status == 422
    status, _ = await harness.api("PUT", "/api/v1/stock/products/x", token=None, json={})
    assert status == 401
