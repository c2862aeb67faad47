"""API tokens: make one, and tell who holds a presented token."""

from __future__ import annotations

from sqlalchemy import select
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
    api_token = await session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if api_token is not None:
        return Principal(Role(api_token.role), api_token.name)
    worker = await session.scalar(select(Worker).where(Worker.token_hash == digest, LIVE))
    if worker is not None:
        return Principal(Role.WORKER, worker.id)
    return None
