"""Database engine and sessions, and schema migration through alembic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations
from workmesh.settings import DatabaseSettings, SqliteSynchronous

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if settings.url.startswith("postgresql+asyncpg"):
        # A transaction left open by a process that hung must not hold its row locks
        # forever, and a writer waiting on a lock should fail loudly rather than stall.
        connect_args["server_settings"] = {
            "idle_in_transaction_session_timeout": "60000",
            "lock_timeout": "15000",
            # asyncpg prepares every statement, and PostgreSQL plans a prepared statement
            # once for all parameters after its fifth run. Our tables change size fast (a
            # stock change turns 100,000 push items pending; the Ozon id cache fills in
            # minutes), so that plan goes stale: a 400-key cache lookup took 60-120 ms a run
            # against 4 ms planned for its own values. Planning each run costs far less.
            "plan_cache_mode": "force_custom_plan",
        }
    pool: dict[str, Any] = {}
    if not _in_memory(settings.url):
        # (An in-memory SQLite database lives in its one connection: no pool to size.)
        pool = {"pool_size": settings.pool_size, "max_overflow": settings.max_overflow}
    engine = create_async_engine(
        settings.url, echo=settings.echo, pool_pre_ping=False, connect_args=connect_args, **pool
    )
    if engine.dialect.name == "sqlite":
        synchronous = settings.sqlite_synchronous

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            sqlite_pragmas(dbapi_connection, synchronous)

        event.listen(engine.sync_engine, "connect", on_connect)
    return engine


def _in_memory(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and (
        parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    )


def sqlite_pragmas(dbapi_connection: Any, synchronous: SqliteSynchronous) -> None:
    # WAL lets the api and dispatcher processes read while the other writes; busy_timeout
    # makes a writer wait for the lock instead of failing at once; synchronous: what a
    # commit survives (DatabaseSettings.sqlite_synchronous).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA synchronous={SqliteSynchronous(synchronous).value.upper()}")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "heads") -> None:
    """Upgrade the schema; blocking (alembic runs its own event loop), call it off the loop.

    ``heads``: each capability's tables are a branch of their own off the core revision.
    """
    command.upgrade(alembic_config(url), revision)
