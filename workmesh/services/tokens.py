"""API tokens: make one, and tell who holds a presented token."""

from __future__ import annotations

from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from models import ApiToken, Worker
from models.workers import LIVE
from workmesh.security import (
    ADMIN_BOOTSTRAP,
    Principal,
    Role,
    hash_token,
    new_token,
    same_hash,
)


class TokenNameTaken(ValueError):
    pass


class UnknownToken(LookupError):
    pass


async def create_api_token(session: AsyncSession, name: str, role: Role) -> str:
    """Store a new token's hash and return the token itself, which is never stored."""
    if role is Role.WORKER:
        raise ValueError("worker tokens come with the worker: use 'workmesh worker add'")
    if await session.get(ApiToken, name) is not None:
        raise TokenNameTaken(f"a token named {name!r} exists already")
    token = new_token()
    session.add(ApiToken(name=name, role=role.value, token_hash=hash_token(token)))
    return token


async def api_tokens(session: AsyncSession) -> list[ApiToken]:
    """The producer and admin tokens by name (their hashes, never the tokens)."""
    return list((await session.scalars(select(ApiToken).order_by(ApiToken.name))).all())


async def revoke_api_token(session: AsyncSession, name: str) -> None:
    """Forget a token: over HTTP it stops working at once; over AMQP at the dispatcher
    leader's next review, which re-reads the token table."""
    token = await session.get(ApiToken, name)
    if token is None:
        raise UnknownToken(f"no token named {name!r}")
    await session.delete(token)


async def authenticate(
    session: AsyncSession, token: str | None, admin_token: str
) -> Principal | None:
    """The principal holding ``token``, or None for a missing or unknown token."""
    if not token:
        return None
    digest = hash_token(token)
    if same_hash(digest, hash_token(admin_token)):
        return Principal(Role.ADMIN, ADMIN_BOOTSTRAP)
    # One statement for both tables: every HTTP request asks, and in the api role each
    # statement is a trip to the database driver's thread and back through a busy loop
    # (two of them took 7 - 8 ms of each long poll's and status change's time on SQLite).
    found = (await session.execute(_HOLDER, {"digest": digest})).first()
    if found is None:
        return None
    return Principal(Role(found.role), found.name)


_HOLDER = union_all(
    select(ApiToken.role, ApiToken.name).where(ApiToken.token_hash == bindparam("digest")),
    select(literal(Role.WORKER.value).label("role"), Worker.id.label("name")).where(
        Worker.token_hash == bindparam("digest"), LIVE
    ),
).limit(1)
