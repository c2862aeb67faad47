"""Push a stock change for N items (100,000 by default) to the three fake marketplaces and
compare the achieved request rate with each marketplace's allowed rate (target: >= 90%).

Time is scaled: the per-minute windows become ``--window`` seconds (the fakes enforce the
same scaled limits), so the run takes seconds instead of minutes. The pusher runs directly
(no RabbitMQ) on a SQLite database, so the figures are the pusher's and the limiters'.

    .venv/bin/python -m bench.stock --quick
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from sqlalchemy import insert

from models.base import utcnow
from models.stock import StockProduct, StockPushItem
from schemas.stock import Marketplace
from tests.stock.fakes import FakeMarketplaces, settings_for
from workmesh.db import create_engine, migrate, session_factory
from workmesh.settings import DatabaseSettings
from workmesh.stock.marketplaces import Marketplaces
from workmesh.stock.metrics import StockMetrics
from workmesh.stock.pusher import Pusher, RoundEnd
from workmesh.stock.settings import StockSettings


async def seed(url: str, items: int) -> None:
    engine = create_engine(DatabaseSettings(url=url))
    now = utcnow()
    async with engine.begin() as connection:
        await connection.execute(
            insert(StockProduct),
            [
                {"sku": f"s{n}", "name": "", "on_hand": 5, "reserved": 0, "version": 1,
                 "ozon_offer_id": f"o{n}", "ozon_warehouse_id": 1, "wb_chrt_id": n + 1,
                 "wb_warehouse_id": 1, "ym_shop_sku": f"y{n}", "ym_campaign_id": 1,
                 "updated_at": now}
                for n in range(items)
            ],
        )  # fmt: skip
        await connection.execute(
            insert(StockPushItem),
            [
                {"marketplace": m.value, "sku": f"s{n}", "target": 5, "version": 1,
                 "pending": True, "pushed_version": 0}
                for m in Marketplace
                for n in range(items)
            ],
        )  # fmt: skip
    await engine.dispose()


async def drain(pusher: Pusher, marketplace: Marketplace) -> float:
    start = time.perf_counter()
    while await pusher.run_round(marketplace) is not RoundEnd.IDLE:
        pass
    return time.perf_counter() - start


async def main(
    items: int, window: float, latency: float, only: tuple[Marketplace, ...] = tuple(Marketplace)
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await asyncio.to_thread(migrate, url)
        await seed(url, items)
        fake = FakeMarketplaces(ozon_window=window, wb_window=window, latency=latency)
        async with TestServer(fake.app) as server:
            base = str(server.make_url("")).rstrip("/")
            settings = settings_for(
                base, ozon_window=window, wb_window=window,
            )  # fmt: skip
            engine = create_engine(DatabaseSettings(url=url))
            pusher = Pusher(settings, session_factory(engine), StockMetrics(CollectorRegistry()))
            pusher.clients = Marketplaces.build(settings)
            seconds = dict(
                zip(only, await asyncio.gather(*(drain(pusher, m) for m in only)), strict=True)
            )
            await pusher.clients.close()
            await engine.dispose()
    report(items, window, latency, settings, fake, seconds)


def report(
    items: int,
    window: float,
    latency: float,
    settings: StockSettings,
    fake: FakeMarketplaces,
    seconds: dict[Marketplace, float],
) -> None:
    together = " and ".join(m.value for m in seconds)
    print(f"{items} items to each marketplace, pushed to {together} at once; per-minute windows "
          f"scaled to {window} s; fake latency {latency * 1000:.0f} ms; SQLite; pusher rounds of "
          f"{settings.push_round:.0f} s without RabbitMQ")  # fmt: skip
    # Allowed request rates in the bench's scaled time; Yandex limits requests in flight, so
    # its ceiling is four answers per answer time.
    allowed = {
        Marketplace.OZON: settings.ozon_requests / window,
        Marketplace.WILDBERRIES: settings.wb_requests / window,
        Marketplace.YANDEX: settings.ym_parallel / max(latency, 1e-3),
    }
    batch = {
        Marketplace.OZON: settings.ozon_batch,
        Marketplace.WILDBERRIES: settings.wb_batch,
        Marketplace.YANDEX: settings.ym_batch,
    }
    print(f"{'marketplace':<12} {'requests':>8} {'seconds':>8} {'req/s':>7} {'allowed':>8} "
          f"{'fraction':>8} {'items/s':>8} {'allowed':>9}  note")  # fmt: skip
    for m in seconds:
        requests = fake.requests[m.value]
        rate = requests / seconds[m]
        # A run that fits in one window's budget is limited by nothing but our own speed.
        if m is Marketplace.YANDEX:
            note = "target >= 90%; allowed = 4 in flight / fake latency"
        elif requests > allowed[m] * window:
            note = "target >= 90%"
        else:
            note = "limit not reached: fits one window's budget"
        print(f"{m.value:<12} {requests:>8} {seconds[m]:>8.2f} {rate:>7.1f} {allowed[m]:>8.1f} "
              f"{rate / allowed[m]:>8.0%} {items / seconds[m]:>8.0f} "
              f"{allowed[m] * batch[m]:>9.0f}  {note}")  # fmt: skip
    print(f"all done after {max(seconds.values()):.1f} s; "
          f"limit violations seen by the fakes: {len(fake.violations)}")  # fmt: skip
    shown = {m: len(v) for m, v in fake.stock.items()}
    print(f"items set per marketplace: {shown}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=6.0, help="seconds per scaled minute")
    parser.add_argument("--latency", type=float, default=0.05, help="fake's answer time, s")
    parser.add_argument("--quick", action="store_true", help="20,000 items, 3 s windows")
    parser.add_argument(
        "--only", nargs="+", choices=[m.value for m in Marketplace], help="push to these alone"
    )
    args = parser.parse_args()
    if args.quick:
        args.items, args.window = 20_000, 3.0
    only = tuple(Marketplace(m) for m in args.only) if args.only else tuple(Marketplace)
    asyncio.run(main(args.items, args.window, args.latency, only))
