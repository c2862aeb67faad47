"""What the three marketplace clients share: one aiohttp session, a limiter slot around every
attempt, and tenacity retries on 429/420/5xx that honour the server's retry hint."""

from __future__ import annotations

import email.utils
import json
import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from clients.marketplaces.limits import Charge

log = logging.getLogger(__name__)

# 420 is Yandex Market's "too many requests in parallel"; the rest are the usual suspects.
RETRY_STATUSES = frozenset({420, 429, 500, 502, 503, 504})
# Headers that say how long to wait: the standard one, Wildberries' own, and a reset time.
_HINT_HEADERS = ("Retry-After", "X-Ratelimit-Retry", "X-RateLimit-Reset")


class MarketplaceError(Exception):
    """The marketplace refused or could not be reached; ``str()`` says why."""


class MarketplaceUnavailable(MarketplaceError):
    """Still failing (429/420/5xx or no connection) after every retry: try again later."""


class MalformedResponse(MarketplaceError):
    """The marketplace answered with a body we cannot read: reported, never retried."""


class Refused(MarketplaceError):
    """A 4xx answer that retrying will not change."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:500].decode('utf-8', 'replace')}")
        self.status, self.body = status, body


class _RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise MalformedResponse(f"not JSON ({error}): {self.body[:200]!r}") from None


@dataclass
class PushOutcome:
    """What a marketplace made of a batch, item by item (keys are our SKUs)."""

    accepted: list[str] = field(default_factory=list)
    # Refused for good (unknown item, bad value): recorded and shown, not retried.
    refused: dict[str, str] = field(default_factory=dict)
    # Not taken this time but fine to send again later (e.g. Ozon's per-item rate limit).
    later: list[str] = field(default_factory=list)
    # The marketplace's own id for an item, when its answer names one (Ozon's product_id).
    ids: dict[str, int] = field(default_factory=dict)

    def merge(self, other: PushOutcome) -> None:
        self.accepted += other.accepted
        self.refused.update(other.refused)
        self.later += other.later
        self.ids.update(other.ids)


class Limiter(Protocol):
    def slot(self) -> AbstractAsyncContextManager[Charge]: ...


def retry_hint(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the server asks us to wait, from whichever hint header it sent."""
    for name in _HINT_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    max_wait: float = 60.0
    # The first backoff when the server gave no hint; doubles per attempt.
    base_wait: float = 0.2

    def wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential(multiplier=self.base_wait, max=self.max_wait)(state)
        error = state.outcome.exception() if state.outcome else None
        hint = error.retry_after if isinstance(error, _RetryableStatus) else None
        return min(self.max_wait, max(backoff, hint or 0.0))


class MarketplaceClient:
    """One marketplace's HTTP API on a shared session; subclasses add the endpoints."""

    name = "marketplace"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str],
        retry: RetryPolicy,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = dict(headers)
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._retry = retry

    async def request(
        self,
        method: str,
        path: str,
        *,
        limiter: Limiter,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        costs: Mapping[int, int] | None = None,
    ) -> Answer:
        """Send with retries; 2xx and 4xx other than 420/429 are returned to the caller.

        ``costs`` maps a status to what the server charges for it (Wildberries: 409 → 10).
        """
        # Encoded once, before waiting for a slot: a big body (Yandex takes 2,000 SKUs) is
        # ready the moment the limit lets it go, and a retry sends the same bytes.
        body = None if json_body is None else json.dumps(json_body).encode()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._retry.attempts),
                wait=self._retry.wait,
                retry=retry_if_exception_type(
                    (_RetryableStatus, aiohttp.ClientConnectionError, TimeoutError)
                ),
                reraise=True,
            ):
                with attempt:
                    async with limiter.slot() as charge:
                        return await self._send(method, path, body, params, costs, charge)
        except (_RetryableStatus, aiohttp.ClientConnectionError, TimeoutError) as error:
            raise MarketplaceUnavailable(
                f"{self.name} {method} {path}: {error or type(error).__name__} "
                f"after {self._retry.attempts} attempts"
            ) from error
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        params: Mapping[str, str] | None,
        costs: Mapping[int, int] | None,
        charge: Charge,
    ) -> Answer:
        headers = self._headers if body is None else self._json_headers
        async with self._session.request(
            method, self._base + path, data=body, params=params, headers=headers
        ) as response:
            body = await response.read()
            charge.cost = (costs or {}).get(response.status, 1)
            if response.status in RETRY_STATUSES:
                hint = retry_hint(response.headers)
                log.info(
                    "%s %s %s: HTTP %s, retry hint %s",
                    self.name,
                    method,
                    path,
                    response.status,
                    hint,
                )
                raise _RetryableStatus(response.status, hint)
            return Answer(response.status, body)
