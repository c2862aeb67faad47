"""Settings of the stock capability (prefix ``WORKMESH_STOCK_``): marketplace endpoints and
credentials, each marketplace's published limits, and the poll and push schedules.

The limits default to what the marketplaces publish; tests and the bench shorten the
per-minute windows (and the fakes with them) so that a run takes seconds, not minutes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Each marketplace's credentials, by the setting names an operator sets.
CREDENTIALS = {
    "ozon": ("ozon_client_id", "ozon_api_key"),
    "wildberries": ("wb_token",),
    "yandex": ("ym_token",),
}


class StockSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_STOCK_")

    # Which marketplaces this mesh polls and pushes to, e.g. '["ozon", "wildberries"]'; none
    # until named, so a mesh without marketplace accounts never calls out. Each one named
    # needs its credentials below.
    marketplaces: list[Literal["ozon", "wildberries", "yandex"]] = Field(default_factory=list)

    ozon_url: str = "https://api-seller.ozon.ru"
    ozon_client_id: str = ""
    ozon_api_key: str = ""
    # Ozon POST /v2/products/stocks: 100 items a request, 80 requests a minute, and each item
    # (offer and warehouse) at most once per 30 s.
    ozon_batch: int = Field(default=100, ge=1, le=100)
    ozon_requests: PositiveInt = 80
    ozon_window: PositiveFloat = 60.0
    ozon_item_interval: PositiveFloat = 30.0
    # Requests in flight at once (Ozon publishes no limit on that): enough that the answer
    # time of one request does not keep us below 80 a minute.
    ozon_parallel: PositiveInt = 4

    wb_url: str = "https://marketplace-api.wildberries.ru"
    wb_token: str = ""
    # Wildberries PUT /api/v3/stocks/{warehouseId}: 1000 items a request, 300 requests a
    # minute; a 409 answer costs ten requests of that budget.
    wb_batch: int = Field(default=1000, ge=1, le=1000)
    wb_requests: PositiveInt = 300
    wb_window: PositiveFloat = 60.0
    wb_conflict_cost: PositiveInt = 10
    wb_parallel: PositiveInt = 2

    ym_url: str = "https://api.partner.market.yandex.ru"
    ym_token: str = ""
    # Yandex Market PUT /v2/campaigns/{campaignId}/offers/stocks: 2000 SKUs a request, at most
    # four requests in flight (HTTP 420 past that).
    ym_batch: int = Field(default=2000, ge=1, le=2000)
    ym_parallel: int = Field(default=4, ge=1, le=4)

    # Polls: how often each feed is read, and how far back each read reaches before the
    # previous one's end (marketplaces publish changes late; de-dup makes re-reading safe).
    poll_interval: PositiveFloat = 60.0
    poll_overlap: PositiveFloat = 600.0
    # First poll of a feed with no cursor reaches this far back.
    poll_initial_lookback: PositiveFloat = 86_400.0
    # Wildberries cancellations: how many open orders one status request asks about.
    wb_status_batch: int = Field(default=1000, ge=1, le=1000)

    # Pusher: how long one push round may run before it hands over to the next scheduled
    # message (a stop does not wait for it: a round checks between requests), the pause when
    # nothing is pending, and the pause after a marketplace stayed down through every retry.
    # Each hand-over waits out the requests in flight: 5 s rounds cost Yandex six points of
    # its allowed rate in bench/stock.py.
    push_round: PositiveFloat = 30.0
    push_idle: PositiveFloat = 1.0
    push_backoff: PositiveFloat = 5.0

    # Outbound HTTP: attempts per request on 429/420/5xx/connection errors, the longest wait
    # between them (a server's Retry-After longer than this is capped), and the timeout.
    http_attempts: PositiveInt = 5
    http_max_wait: PositiveFloat = 60.0
    http_timeout: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _credentials_for_each_marketplace(self) -> StockSettings:
        for marketplace in self.marketplaces:
            missing = [name for name in CREDENTIALS[marketplace] if not getattr(self, name)]
            if missing:
                names = " and ".join(f"WORKMESH_STOCK_{name.upper()}" for name in missing)
                raise ValueError(f"{marketplace} is in WORKMESH_STOCK_MARKETPLACES: set {names}")
        return self
