"""Tokens and who holds them.

Tokens are 256 random bits, so a plain SHA-256 of one is as hard to reverse as the token is to
guess; a slow password hash would add cost on every message without adding safety.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "wm_"


class Role(StrEnum):
    ADMIN = "admin"
    PRODUCER = "producer"
    WORKER = "worker"


@dataclass(frozen=True)
class Principal:
    role: Role
    name: str  # token name, or the worker's id

    @property
    def may_submit(self) -> bool:
        return self.role in (Role.ADMIN, Role.PRODUCER)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


ADMIN_BOOTSTRAP = "admin"  # the name of the principal holding WORKMESH_ADMIN_TOKEN


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def header_token(value: object) -> str | None:
    """A token as an AMQP header carries it (a string, or bytes from some clients); None when
    the header holds none."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) and value else None


def header_holds(value: object, token_hash: str) -> bool:
    """Does this header value hold the token with this hash?"""
    token = header_token(value)
    return token is not None and same_hash(hash_token(token), token_hash)
