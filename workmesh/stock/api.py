"""HTTP API of the stock capability: products and their stock, by hand (the seed's manual
management), with what each marketplace was last sent and any error it gave."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from faststream.rabbit import RabbitBroker, RabbitExchange
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.stock import StockProblem, StockProduct, StockPushItem
from rabbitmq.topology import EVENTS_EXCHANGE
from schemas.stock import SKU_PATTERN, Marketplace, ProductIn, ProductOut, PushState, StockSet
from workmesh.api.common import ApiError, json_response, principal, read_body
from workmesh.security import Role
from workmesh.stock.service import UnknownProduct, changed, set_stock, upsert_product

EVENTS = RabbitExchange(EVENTS_EXCHANGE, declare=False)
PREFIX = "/api/v1/stock"


def add_routes(
    app: web.Application,
    sessions: async_sessionmaker[AsyncSession],
    broker: RabbitBroker,
    marketplaces: Sequence[Marketplace],
) -> None:
    import re

    sku_ok = re.compile(SKU_PATTERN)

    def sku_of(request: web.Request) -> str:
        sku = request.match_info["sku"]
        if not sku_ok.match(sku):
            raise ApiError(422, f"a SKU matches {SKU_PATTERN}")
        return sku

    async def out(session: AsyncSession, product: StockProduct) -> ProductOut:
        items = (
            await session.execute(select(StockPushItem).where(StockPushItem.sku == product.sku))
        ).scalars()
        return ProductOut(
            **{f: getattr(product, f) for f in ProductOut.model_fields if f != "push"},
            push=[PushState(**{f: getattr(i, f) for f in PushState.model_fields}) for i in items],
        )

    async def publish(product: StockProduct, reason: str) -> None:
        await broker.publish(
            changed(product, reason), exchange=EVENTS, routing_key="stock.changed", persist=True
        )

    async def put_product(request: web.Request) -> web.Response:
        principal(request, Role.ADMIN)
        sku = sku_of(request)
        body = await read_body(request, ProductIn)
        async with sessions() as session, session.begin():
            product, created = await upsert_product(session, sku, body, marketplaces)
        await publish(product, "product")
        async with sessions() as session:
            return json_response(await out(session, product), 201 if created else 200)

    async def get_product(request: web.Request) -> web.Response:
        principal(request, Role.ADMIN, Role.PRODUCER)
        async with sessions() as session:
            product = await session.get(StockProduct, sku_of(request))
            if product is None:
                raise ApiError(404, "no such product")
            return json_response(await out(session, product))

    async def post_stock(request: web.Request) -> web.Response:
        principal(request, Role.ADMIN)
        sku = sku_of(request)
        body = await read_body(request, StockSet)
        if (body.on_hand is None) == (body.delta is None):
            raise ApiError(422, "give exactly one of on_hand and delta")
        try:
            async with sessions() as session, session.begin():
                product = await set_stock(
                    session, sku, marketplaces, on_hand=body.on_hand, delta=body.delta
                )
        except UnknownProduct:
            raise ApiError(404, "no such product") from None
        except ValueError as error:
            raise ApiError(409, str(error)) from None
        await publish(product, body.reason)
        async with sessions() as session:
            return json_response(await out(session, product))

    async def get_problems(request: web.Request) -> web.Response:
        principal(request, Role.ADMIN, Role.PRODUCER)
        async with sessions() as session:
            rows = (
                await session.execute(
                    select(StockProblem).order_by(StockProblem.id.desc()).limit(200)
                )
            ).scalars()
            return json_response(
                {
                    "problems": [
                        {"marketplace": p.marketplace, "source": p.source, "detail": p.detail,
                         "at": p.created_at.isoformat()}
                        for p in rows
                    ]
                }
            )  # fmt: skip

    app.router.add_put(PREFIX + "/products/{sku}", put_product)
    app.router.add_get(PREFIX + "/products/{sku}", get_product)
    app.router.add_post(PREFIX + "/products/{sku}/stock", post_stock)
    app.router.add_get(PREFIX + "/problems", get_problems)
