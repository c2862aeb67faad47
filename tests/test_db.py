"""The engine's connection settings, which the rest of the code relies on without saying so."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from pydantic import ValidationError
from sqlalchemy import QueuePool, text

from workmesh.db import create_engine
from workmesh.settings import DatabaseSettings, SqliteSynchronous


async def test_every_connection_gets_the_settings_the_code_relies_on(database_url: str) -> None:
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                shown = [
                    (await connection.execute(text(f"PRAGMA {name}"))).scalar_one()
                    for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
                ]
                # synchronous 2 = FULL: a commit survives a power loss (see the next test).
                assert shown == ["wal", 1, 10000, 2]
                return
            shown = [
                (await connection.execute(text(f"SHOW {name}"))).scalar_one()
                for name in (
                    "plan_cache_mode",
                    "lock_timeout",
                    "idle_in_transaction_session_timeout",
                )
            ]
            # Each prepared statement planned for its own values (a generic plan over a
            # table that grew since read the whole Ozon id cache per lookup), locks waited
            # for at most 15 s, a hung transaction ended after a minute.
            assert shown == ["force_custom_plan", "15s", "1min"]
    finally:
        await engine.dispose()


async def test_sqlite_commits_are_durable_unless_asked_otherwise(tmp_path: Path) -> None:
    # The leader acknowledges an intake message once its commit returns: with NORMAL the last
    # commits could vanish in a power loss while RabbitMQ had already dropped the message.
    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    for chosen, code in ((SqliteSynchronous.FULL, 2), (SqliteSynchronous.NORMAL, 1)):
        engine = create_engine(DatabaseSettings(url=url, sqlite_synchronous=chosen))
        try:
            async with engine.connect() as connection:
                shown = (await connection.execute(text("PRAGMA synchronous"))).scalar_one()
                assert shown == code, chosen
        finally:
            await engine.dispose()
    with pytest.raises(ValidationError, match="sqlite_synchronous"):
        DatabaseSettings(url=url, sqlite_synchronous="off")


async def test_the_pool_keeps_the_connections_a_busy_role_uses(database_url: str) -> None:
    # SQLAlchemy's default of 5 made the order API open and close PostgreSQL connections
    # every busy second (it writes up to 8 at a time beside the sync consumers).
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        pool = cast(QueuePool, engine.pool)
        assert (pool.size(), pool._max_overflow) == (20, 10)
        small = create_engine(DatabaseSettings(url=database_url, pool_size=2, max_overflow=0))
        assert cast(QueuePool, small.pool).size() == 2
        await small.dispose()
    finally:
        await engine.dispose()
