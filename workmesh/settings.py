"""Settings from the environment (prefix ``WORKMESH_``), split by concern and built once.

Nothing here is read at import time: ``Settings.from_env()`` is called by the entry point and
the result is passed down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", "admin"})


class Profile(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class AmqpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_AMQP_")

    url: str = "amqp://guest:guest@127.0.0.1:5672/"


class SqliteSynchronous(StrEnum):
    FULL = "full"
    NORMAL = "normal"


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_DATABASE_")

    # The embedded default; the same code serves postgresql+asyncpg://... URLs.
    url: str = "sqlite+aiosqlite:///./workmesh.db"
    # SQLite only: "full" syncs the write-ahead log at every commit, so a commit the mesh acts
    # on (an intake message acknowledged, an assignment published) survives a power loss or
    # an OS crash. "normal" syncs only at checkpoints: faster, and safe from a crash of the
    # process, but the last commits (up to ~100 turns) may be gone after a power loss while
    # RabbitMQ has already forgotten their messages. PostgreSQL always commits durably here.
    sqlite_synchronous: SqliteSynchronous = SqliteSynchronous.FULL
    echo: bool = False
    # Connections each process keeps open, and how many more it may open for a burst (closed
    # again after it). Kept above what a role uses at once in steady work: the order API
    # writes up to ``ORDERS_DB_PARALLEL`` (8) at a time beside the sync consumers, and with
    # SQLAlchemy's default of 5 every busy second opened and closed PostgreSQL connections
    # (a TLS attempt, authentication and settings each time).
    pool_size: int = Field(default=20, ge=1, le=200)
    max_overflow: int = Field(default=10, ge=0, le=200)


class HttpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_HTTP_")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class ScalingPolicyName(StrEnum):
    STEP = "step"
    THRESHOLD = "threshold"


class DispatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_DISPATCH_")

    # A worker that has sent no heartbeat for this long is offline; its tasks go back.
    heartbeat_timeout: PositiveFloat = 30.0
    # How often the leader reviews the pool: heartbeats, scaling, metrics, reconciliation.
    review_interval: PositiveFloat = 1.0
    # Attempts before a failing task is dead-lettered.
    max_attempts: PositiveInt = 3
    # Rejections (by any workers, in all) before a task is dead-lettered instead of queued
    # again: a task nobody will take must not go round for ever.
    max_rejections: PositiveInt = 20
    # Backoff before attempt 2, 3, ...: each delay becomes a RabbitMQ queue with that TTL.
    retry_delays: list[PositiveFloat] = Field(default_factory=lambda: [1.0, 10.0, 60.0])
    # An engaged reserve worker with no tasks for this long goes back to standby.
    reserve_idle: PositiveFloat = 60.0
    scaling_policy: ScalingPolicyName = ScalingPolicyName.STEP
    # threshold policy: "queue length:reserve count" pairs, e.g. "10:1,50:2,200:4".
    scaling_thresholds: str = "1:1,50:2,200:4"
    # threshold policy: the queue length is averaged over this window.
    scaling_window: PositiveFloat = 30.0
    # Most intake messages taken in one grouped commit.
    batch_size: int = Field(default=128, ge=1, le=1000)
    # How often the leader checks its count of each worker's load against the database.
    reconcile_interval: PositiveFloat = 10.0
    # Queued tasks older than this with no message left in RabbitMQ are published again.
    orphan_after: PositiveFloat = 60.0
    # Finished tasks (done, dead, cancelled) are deleted this long after they finished, so the
    # table holds what is live plus a window of history; 0 keeps them for ever.
    retention: NonNegativeFloat = 7 * 24 * 3600.0

    @model_validator(mode="after")
    def _thresholds_parse(self) -> DispatchSettings:
        parse_thresholds(self.scaling_thresholds)
        return self


def parse_thresholds(text: str) -> list[tuple[int, int]]:
    """``"10:1,50:2"`` → ``[(10, 1), (50, 2)]``, sorted by queue length."""
    pairs: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        length, _, count = part.partition(":")
        try:
            pairs.append((int(length), int(count)))
        except ValueError:
            raise ValueError(
                f"scaling threshold {part!r} is not 'queue_length:reserve_count'"
            ) from None
    if any(length < 0 or count < 0 for length, count in pairs):
        raise ValueError("scaling thresholds must not be negative")
    return sorted(pairs)


class ChannelSettings(BaseSettings):
    """How workers without an AMQP connection get their tasks: HTTP, WebSocket, notifications."""

    model_config = SettingsConfigDict(env_prefix="WORKMESH_CHANNELS_")

    # A task handed out over HTTP or WebSocket and not started within this goes back.
    lease: PositiveFloat = 60.0
    # The longest a long poll (GET /api/v1/worker/tasks?wait=...) may wait.
    max_wait: PositiveFloat = 30.0
    # Webhook notifications: tries in all, the first pause between them (doubling), and the
    # time one POST may take.
    webhook_tries: PositiveInt = 5
    webhook_backoff: PositiveFloat = 1.0
    webhook_timeout: PositiveFloat = 10.0
    # Email notifications go through this SMTP server; no host, no email.
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_sender: str = "workmesh@localhost"
    # Where the web page for people is served, for links in notifications.
    public_url: str = "http://127.0.0.1:8080"


class SecuritySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKMESH_")

    profile: Profile = Profile.DEVELOPMENT
    # Bootstrap admin token; more tokens are made with ``workmesh token add``.
    admin_token: str = "change-me"

    @model_validator(mode="after")
    def _no_placeholder_in_production(self) -> SecuritySettings:
        if self.profile is Profile.PRODUCTION and self.admin_token in PLACEHOLDER_SECRETS:
            raise ValueError(
                "WORKMESH_ADMIN_TOKEN holds a placeholder; set a real secret in production"
            )
        return self


@dataclass(frozen=True)
class Settings:
    amqp: AmqpSettings
    database: DatabaseSettings
    http: HttpSettings
    dispatch: DispatchSettings
    security: SecuritySettings
    channels: ChannelSettings = field(default_factory=ChannelSettings)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            amqp=AmqpSettings(),
            database=DatabaseSettings(),
            http=HttpSettings(),
            dispatch=DispatchSettings(),
            security=SecuritySettings(),
            channels=ChannelSettings(),
        )
