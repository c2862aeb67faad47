"""Alembic migrations: the only way workmesh's schema is made, in tests too."""
