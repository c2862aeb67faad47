"""The peer's Orders API, as this instance's sync uses it: send snapshots (one, or a batch),
GET a page of the list. Connection errors, timeouts and 5xx are retried a few times
(tenacity); anything else is a ``PeerError`` at once. Whatever fails stays in the outbox for
the resend sweep."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from schemas.orders import OrderOut, Snapshot

PREFIX = "/api/v1/orders"


class PeerError(Exception):
    """The peer did not take the request; the text says why."""


@dataclass(frozen=True)
class Delivery:
    """What became of one order sent in a batch."""

    error: str | None  # None: the peer applied it
    answer: Snapshot | None = None  # the peer's answer to it, when it has one


def _delivery(result: dict[str, Any]) -> Delivery:
    answer = result.get("answer")
    if answer is None:
        return Delivery(result.get("error"))
    try:
        return Delivery(result.get("error"), Snapshot.model_validate(answer))
    except ValidationError as problem:
        # Applied there, but we cannot read what it says: sent again later, answered again.
        return Delivery(f"the peer's answer is malformed: {problem.errors()[:1]}")


class _Retryable(PeerError):
    pass


class Peer:
    def __init__(self, url: str, token: str, *, attempts: int = 3, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._token = token
        self._attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"Authorization": f"Bearer {self._token}"},
                # No keep-alive pool of dead sockets after the peer restarts.
                connector=aiohttp.TCPConnector(limit=64, force_close=False),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        ):
            with attempt:
                try:
                    async with self._http().request(method, self.url + path, **kwargs) as resp:
                        text = await resp.text()
                        if resp.status >= 500:
                            raise _Retryable(f"{method} {path}: HTTP {resp.status}: {text[:300]}")
                        if resp.status >= 400:
                            raise PeerError(f"{method} {path}: HTTP {resp.status}: {text[:300]}")
                        return await resp.json(content_type=None)
                except (TimeoutError, aiohttp.ClientError) as error:
                    raise _Retryable(f"{method} {path}: {type(error).__name__}: {error}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def put_snapshots(self, snapshots: list[tuple[str, Snapshot]]) -> dict[str, Delivery]:
        """Send several orders' snapshots in one request, asking for the peer's answers in
        its response. Returns what became of each order."""
        batch = {"snapshots": [{"id": order_id, **snap.model_dump(mode="json")}
                               for order_id, snap in snapshots], "answers": True}  # fmt: skip
        body = await self._request("POST", f"{PREFIX}/sync", json=batch)
        try:
            return {str(r["id"]): _delivery(r) for r in body["results"]}
        except (KeyError, TypeError, AttributeError) as error:
            raise PeerError(f"POST {PREFIX}/sync: an answer without results: {error}") from None

    async def list_page(
        self, since: datetime | None, cursor: str | None, limit: int
    ) -> tuple[list[OrderOut], str | None]:
        params: dict[str, str] = {"limit": str(limit)}
        if since is not None:
            params["updated_since"] = since.isoformat()
        if cursor is not None:
            params["cursor"] = cursor
        body = await self._request("GET", PREFIX, params=params)
        return [OrderOut.model_validate(o) for o in body["orders"]], body.get("next")
