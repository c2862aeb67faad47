"""Push a stock change for N items (100,000 by default) to the three fake marketplaces at once
and compare the time with the fastest each marketplace's limits allow (target: >= 90%).

The fakes run in a process of their own (a marketplace's work is not done on our CPU) and
enforce the limits they are given; the pusher runs directly (no RabbitMQ) on SQLite, so the
figures are the pusher's and the limiters'. Time is scaled where the real limit would make
the run take minutes:

- Ozon allows 80 requests of 100 items a minute (133 items/s: 12.5 minutes for 100,000);
  here its minute lasts ``--window`` seconds, so its rate is 60/window times the real one.
- Wildberries allows 300 requests of 1,000 items a minute (5,000 items/s), the budget of one
  real minute is more than 100,000 items need, so the run would only show our own speed. Here
  the window is ``--window`` seconds with the budget cut in proportion: the real rate.
- Yandex Market allows four requests in flight, so its rate is four answers per answer time
  (``--ym-latency``; the fastest schedule is ceil(requests / 4) answer times).

    .venv/bin/python -m bench.stock [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from sqlalchemy import insert

from bench._common import create_pg_database, drop_pg_database, free_port
from models.base import utcnow
from models.stock import StockProduct, StockPushItem
from schemas.stock import Marketplace
from tests.stock.fakes import settings_for
from workmesh.db import create_engine, migrate, session_factory
from workmesh.runtime import freeze_startup_heap
from workmesh.settings import DatabaseSettings
from workmesh.stock.marketplaces import Marketplaces
from workmesh.stock.metrics import StockMetrics
from workmesh.stock.pusher import Pusher, RoundEnd
from workmesh.stock.settings import StockSettings

REPO = Path(__file__).resolve().parent.parent


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


@dataclass(frozen=True)
class Limits:
    """The limits the fakes enforce and the pusher keeps, in the bench's time."""

    window: float  # seconds
    ozon_requests: int  # per window
    wb_requests: int  # per window
    latency: float  # Ozon's and Wildberries' answer time, seconds
    ym_latency: float

    @classmethod
    def scaled(cls, window: float, latency: float, ym_latency: float) -> Limits:
        real = StockSettings()
        return cls(
            window=window,
            ozon_requests=real.ozon_requests,
            wb_requests=max(1, round(real.wb_requests * window / real.wb_window)),
            latency=latency,
            ym_latency=ym_latency,
        )

    def fastest(self, marketplace: Marketplace, requests: int) -> float | None:
        """The shortest time the limit allows for ``requests`` requests (None when they fit in
        one window's budget: then nothing but our own speed limits the run)."""
        if marketplace is Marketplace.YANDEX:
            return math.ceil(requests / StockSettings().ym_parallel) * self.ym_latency
        budget = self.ozon_requests if marketplace is Marketplace.OZON else self.wb_requests
        if requests <= budget:
            return None
        # A full budget at once, another each window after, the last answer after it.
        return (math.ceil(requests / budget) - 1) * self.window + self.latency


class FakeProcess:
    """bench/_fake_marketplaces.py, started and stopped around a run."""

    def __init__(self, limits: Limits) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "bench._fake_marketplaces", "--port", str(self.port),
            "--window", str(limits.window), "--ozon-requests", str(limits.ozon_requests),
            "--wb-requests", str(limits.wb_requests), "--latency", str(limits.latency),
            "--ym-latency", str(limits.ym_latency),
        ]  # fmt: skip
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> FakeProcess:
        self.process = await asyncio.create_subprocess_exec(*self.command, cwd=REPO)
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    await self.state(http)
                    return self
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        self.process.terminate()
        raise RuntimeError(f"the fake marketplaces did not start: {' '.join(self.command)}")

    async def __aexit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.terminate()
        await asyncio.wait_for(self.process.wait(), 10)

    async def state(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        # The fakes want credentials on every path; any will do.
        headers = {"Client-Id": "bench", "Api-Key": "bench"}
        async with http.get(f"{self.base}/_bench/state", headers=headers) as response:
            response.raise_for_status()
            return dict(await response.json())


async def main(items: int, limits: Limits, only: tuple[Marketplace, ...], url: str) -> None:
    await asyncio.to_thread(migrate, url)
    await seed(url, items)
    async with FakeProcess(limits) as fake:
        settings = settings_for(
            fake.base, ozon_window=limits.window, ozon_requests=limits.ozon_requests,
            wb_window=limits.window, wb_requests=limits.wb_requests,
        )  # fmt: skip
        engine = create_engine(DatabaseSettings(url=url))
        pusher = Pusher(settings, session_factory(engine), StockMetrics(CollectorRegistry()))
        pusher.clients = Marketplaces.build(settings)
        freeze_startup_heap()  # as `workmesh run` does once its roles have started
        seconds = dict(
            zip(only, await asyncio.gather(*(drain(pusher, m) for m in only)), strict=True)
        )
        await pusher.clients.close()
        await engine.dispose()
        async with aiohttp.ClientSession() as http:
            state = await fake.state(http)
    report(items, limits, seconds, state, url.split("+")[0])


def report(
    items: int,
    limits: Limits,
    seconds: dict[Marketplace, float],
    state: dict[str, Any],
    database: str,
) -> None:
    together = " and ".join(m.value for m in seconds)
    real = StockSettings()
    print(
        f"{items} items to each marketplace, pushed to {together} at once; {database}; pusher "
        f"rounds of {real.push_round:.0f} s without RabbitMQ; fakes in their own process"
    )
    print(f"limits: Ozon {limits.ozon_requests} requests per {limits.window:g} s "
          f"({60 / limits.window:g}x its real rate); Wildberries {limits.wb_requests} per "
          f"{limits.window:g} s (its real rate); Yandex 4 in flight, answer "
          f"{limits.ym_latency * 1000:.0f} ms; Ozon and Wildberries answer "
          f"{limits.latency * 1000:.0f} ms")  # fmt: skip
    print(f"{'marketplace':<12} {'requests':>8} {'seconds':>8} {'fastest':>8} {'fraction':>8} "
          f"{'items/s':>8} {'allowed':>8}  note")  # fmt: skip
    for m, took in seconds.items():
        requests = state["requests"][m.value]
        fastest = limits.fastest(m, requests)
        if fastest is None:
            print(
                f"{m.value:<12} {requests:>8} {took:>8.2f} {'-':>8} {'-':>8} "
                f"{items / took:>8.0f} {'-':>8}  fits one window's budget: not limit-bound"
            )
            continue
        print(f"{m.value:<12} {requests:>8} {took:>8.2f} {fastest:>8.2f} {fastest / took:>8.0%} "
              f"{items / took:>8.0f} {items / fastest:>8.0f}  target >= 90%")  # fmt: skip
    print(f"all done after {max(seconds.values()):.1f} s; limit violations seen by the fakes: "
          f"{len(state['violations'])}; items set per marketplace: {state['shown']}; "
          f"items set more than once: {state['rewritten']}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=6.0, help="seconds per window")
    parser.add_argument(
        "--latency", type=float, default=0.05, help="Ozon's and Wildberries' answer time, s"
    )
    parser.add_argument("--ym-latency", type=float, default=0.5, help="Yandex's answer time, s")
    parser.add_argument("--quick", action="store_true", help="20,000 items, 3 s windows")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument(
        "--only", nargs="+", choices=[m.value for m in Marketplace], help="push to these alone"
    )
    args = parser.parse_args()
    if args.quick:
        args.items, args.window = 20_000, 3.0
    only = tuple(Marketplace(m) for m in args.only) if args.only else tuple(Marketplace)
    limits = Limits.scaled(args.window, args.latency, args.ym_latency)
    if args.postgres:
        name = f"bench_stock_{os.getpid()}"
        try:
            asyncio.run(main(args.items, limits, only, create_pg_database(name)))
        finally:
            drop_pg_database(name)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            asyncio.run(main(args.items, limits, only, url))
