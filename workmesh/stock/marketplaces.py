"""The three marketplace clients, built from the stock settings on one aiohttp session."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from clients.marketplaces.base import RetryPolicy
from clients.marketplaces.limits import InFlight, SlidingWindow
from clients.marketplaces.ozon import OzonClient
from clients.marketplaces.wildberries import WildberriesClient
from clients.marketplaces.yandex import YandexClient
from schemas.stock import Marketplace
from workmesh.stock.settings import StockSettings


@dataclass
class Marketplaces:
    http: aiohttp.ClientSession
    ozon: OzonClient
    wildberries: WildberriesClient
    yandex: YandexClient
    enabled: tuple[Marketplace, ...]

    @classmethod
    def build(cls, settings: StockSettings) -> Marketplaces:
        http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.http_timeout),
            # Enough connections for every request the limits allow in flight at once.
            connector=aiohttp.TCPConnector(limit=32),
        )
        retry = RetryPolicy(attempts=settings.http_attempts, max_wait=settings.http_max_wait)
        return cls(
            http=http,
            ozon=OzonClient(
                http,
                settings.ozon_url,
                settings.ozon_client_id,
                settings.ozon_api_key,
                SlidingWindow(settings.ozon_requests, settings.ozon_window),
                retry,
            ),
            wildberries=WildberriesClient(
                http,
                settings.wb_url,
                settings.wb_token,
                SlidingWindow(settings.wb_requests, settings.wb_window),
                settings.wb_conflict_cost,
                retry,
            ),
            yandex=YandexClient(
                http, settings.ym_url, settings.ym_token, InFlight(settings.ym_parallel), retry
            ),
            enabled=tuple(Marketplace(m) for m in settings.marketplaces),
        )

    async def close(self) -> None:
        await self.http.close()
