"""Settings of the Bitrix24 sync (env prefix ``WORKMESH_BITRIX24_``)."""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from clients.bitrix24 import MAX_BATCH_COMMANDS, Endpoint


class Bitrix24Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_BITRIX24_")

    # Either an inbound webhook URL (https://<portal>/rest/<user>/<secret>/) ...
    webhook_url: SecretStr | None = None
    # ... or the portal's REST URL (https://<portal>/rest/) with an OAuth access token.
    portal_url: str | None = None
    oauth_token: SecretStr | None = None
    # Unset: the consumer does not run and reception events wait in their durable queue.

    # The deal's user field that holds the clinic's ident_id.
    ident_field: str = "UF_CRM_IDENT_ID"
    # Deal stage for each reception status.
    stages: dict[str, str] = Field(
        default_factory=lambda: {
            "scheduled": "NEW",
            "confirmed": "PREPARATION",
            "completed": "WON",
            "cancelled": "LOSE",
            "no_show": "LOSE",
        }
    )

    # Records per sync batch, and how long a partial batch waits for more before it goes.
    batch_size: int = Field(default=50, ge=1, le=MAX_BATCH_COMMANDS)
    flush_timeout: PositiveFloat = 0.5
    # Record batches synced at once, and HTTP requests in flight (the portal's latency would
    # otherwise leave its rate allowance unused).
    batches_in_flight: PositiveInt = 8
    requests_in_flight: PositiveInt = 4
    # Unacknowledged messages RabbitMQ hands us: enough to fill every batch in flight.
    prefetch: PositiveInt = 500

    # The portal's leaky bucket (standard plans 50 / 2 per s; enterprise 250 / 5 per s), and
    # how much of it we leave unused (requests are counted when they arrive, not when sent).
    bucket_capacity: PositiveFloat = 50.0
    bucket_drain: PositiveFloat = 2.0
    bucket_margin: float = Field(default=2.0, ge=0)
    # Operating time per method per window (480 s per 10 min), and the share kept in reserve.
    operating_limit: PositiveFloat = 480.0
    operating_margin: float = Field(default=0.1, ge=0, lt=1)
    # A 429 that gives no reset time blocks the method for this long.
    operating_pause: PositiveFloat = 60.0

    # Backoff of the retries after a 503 or a network error (the seed's 1 s, 2 s, 4 s).
    retry_waits: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0])
    request_timeout: PositiveFloat = 30.0
    # A record that could not be synced now (the portal unreachable, ...) comes back after
    # this long through a RabbitMQ delay queue; after max_attempts it is dead-lettered.
    retry_delay: PositiveFloat = 30.0
    max_attempts: PositiveInt = 20

    @field_validator("webhook_url", "portal_url", "oauth_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # compose passes an unset variable as "" (${VAR:-}); that means "not configured".
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_way_in(self) -> Bitrix24Settings:
        if self.webhook_url is not None and self.oauth_token is not None:
            raise ValueError("set webhook_url or portal_url with oauth_token, not both")
        if (self.portal_url is None) != (self.oauth_token is None):
            raise ValueError("portal_url and oauth_token go together")
        if self.bucket_capacity - self.bucket_margin < 1:
            raise ValueError("bucket_capacity - bucket_margin must leave room for a request")
        return self

    @property
    def configured(self) -> bool:
        return self.webhook_url is not None or self.oauth_token is not None

    def endpoint(self) -> Endpoint:
        if self.webhook_url is not None:
            return Endpoint(self.webhook_url.get_secret_value())
        if self.portal_url is not None and self.oauth_token is not None:
            return Endpoint(self.portal_url, self.oauth_token.get_secret_value())
        raise ValueError("Bitrix24 is not configured: set WORKMESH_BITRIX24_WEBHOOK_URL")
