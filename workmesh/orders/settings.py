"""Settings of the orders capability (prefix ``WORKMESH_ORDERS_``): who this instance is, where
its peer's Orders API is, and the resend and pull schedules."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.orders import MAX_SNAPSHOTS


class OrdersSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_ORDERS_")

    # This instance's name, recorded as the origin of the orders created here.
    instance: str = Field(default="A", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    # The peer's base URL (http://host:port) and a token it accepts; no URL: no sync (the
    # Orders API still serves, changes wait in the outbox).
    peer_url: str = ""
    peer_token: str = ""

    # An order that waits for the peer's answer (NEW, UPD, DEL, ERROR), or whose snapshot has
    # not reached the peer, is sent again after this long.
    resend_after: PositiveFloat = 30.0
    # How often the resend sweep looks (a RabbitMQ delay chain).
    sweep_every: PositiveFloat = 5.0
    # The pull: how often the peer's list is read, and how far before the last read's end
    # each read starts again (commits that became visible late; re-reading is harmless).
    pull_every: PositiveFloat = 30.0
    pull_overlap: PositiveFloat = 60.0
    pull_page: int = Field(default=200, ge=1, le=1000)

    # Order writes (API and sync) in a transaction at once; keep it below the database pool
    # (SQLAlchemy's default: 5 + 10 overflow).
    db_parallel: int = Field(default=8, ge=1, le=64)

    # Parallel sync consumers; an order always goes through the same one, in order.
    shards: int = Field(default=4, ge=1, le=64)
    # Snapshots in one request to the peer at most (a shard sends one batch at a time).
    sync_batch: int = Field(default=100, ge=1, le=MAX_SNAPSHOTS)

    # Outbound HTTP to the peer: attempts per send on connection errors and 5xx, and timeout.
    http_attempts: PositiveInt = 3
    http_timeout: PositiveFloat = 10.0
