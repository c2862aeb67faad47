"""The three fake marketplaces (tests/stock/fakes.py) as a process of their own, for
bench/stock.py: a real marketplace's work is not done on our CPU, so the fake's JSON parsing and
bookkeeping must not share the pusher's process. ``GET /_bench/state`` tells what it saw.

    .venv/bin/python -m bench._fake_marketplaces --port 8081 --window 6 \
        --ozon-requests 80 --wb-requests 30 --latency 0.05 --ym-latency 0.5
"""

from __future__ import annotations

import argparse

from aiohttp import web

from tests.stock.fakes import FakeMarketplaces


def build(args: argparse.Namespace) -> web.Application:
    fake = FakeMarketplaces(
        ozon_requests=args.ozon_requests,
        ozon_window=args.window,
        wb_requests=args.wb_requests,
        wb_window=args.window,
        latency=args.latency,
        ym_latency=args.ym_latency,
    )

    async def state(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": fake.requests,
                "violations": fake.violations,
                "shown": {m: len(items) for m, items in fake.stock.items()},
                # Items set more than once: a value pushed twice is wasted budget.
                "rewritten": {
                    m: sum(1 for n in writes.values() if n > 1) for m, writes in fake.writes.items()
                },
            }
        )

    fake.app.router.add_get("/_bench/state", state)
    return fake.app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--window", type=float, required=True, help="seconds per window")
    parser.add_argument("--ozon-requests", type=int, required=True, help="Ozon's per window")
    parser.add_argument("--wb-requests", type=int, required=True, help="Wildberries' per window")
    parser.add_argument("--latency", type=float, required=True, help="answer time, seconds")
    parser.add_argument("--ym-latency", type=float, required=True, help="Yandex's answer time")
    args = parser.parse_args()
    web.run_app(build(args), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
