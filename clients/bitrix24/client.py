"""The Bitrix24 REST client on one ``aiohttp.ClientSession``.

Every request waits for room in the leaky bucket and in each method's operating time first,
then goes out; tenacity retries what is safe to retry: a 503 ``QUERY_LIMIT_EXCEEDED`` (the
portal refused before running anything), a 429 ``OPERATION_TIME_LIMIT`` (after the reset the
server gave), and a network error or a non-JSON error page, but the last two only for
requests without a create: such a request may have run, and a second create makes a
duplicate. The caller looks up before it tries a create again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from clients.bitrix24.commands import MAX_BATCH_COMMANDS, Command, CommandOutcome, by_key
from clients.bitrix24.errors import (
    AmbiguousFailure,
    Bitrix24Error,
    OperationTimeLimit,
    QueryLimitExceeded,
)
from clients.bitrix24.limits import LeakyBucket, OperatingBudget


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: an inbound webhook URL (``https://x.bitrix24.ru/rest/1/secret/``),
    or the portal's REST URL (``https://x.bitrix24.ru/rest/``) with an OAuth access token."""

    base_url: str
    token: str | None = None

    def url(self, method: str) -> str:
        return f"{self.base_url.rstrip('/')}/{method}.json"

    def body(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**params, "auth": self.token} if self.token else dict(params)


@dataclass(frozen=True)
class RetryPolicy:
    # The seed's backoff: 1 s, 2 s, 4 s, then give up (three retries after the first try).
    waits: tuple[float, ...] = (1.0, 2.0, 4.0)


class CallObserver(Protocol):
    """Hears every HTTP call (for metrics)."""

    def called(self, method: str, seconds: float, outcome: str) -> None: ...

    def batched(self, methods: Sequence[str]) -> None: ...


class _Quiet:
    def called(self, method: str, seconds: float, outcome: str) -> None:
        pass

    def batched(self, methods: Sequence[str]) -> None:
        pass


class Bitrix24Client:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        *,
        bucket: LeakyBucket,
        budget: OperatingBudget,
        retry: RetryPolicy | None = None,
        observer: CallObserver | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.session = session
        self.endpoint = endpoint
        self.bucket = bucket
        self.budget = budget
        self.retry = retry or RetryPolicy()
        self.observer: CallObserver = observer or _Quiet()
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One method; returns the whole answer (``result``, ``total``, ``next``, ``time``)."""
        command = Command(method, params or {})
        return await self._with_retries(
            method, dict(command.params), [method], creates=command.creates, slot_taken=False
        )

    async def batch(
        self, commands: Sequence[Command], *, halt: bool = False, slot_taken: bool = False
    ) -> list[CommandOutcome]:
        """Up to 50 commands in one request; one outcome per command, in order.

        ``slot_taken``: the caller already took this request's place in the bucket.
        """
        if not commands:
            return []
        if len(commands) > MAX_BATCH_COMMANDS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_COMMANDS} commands")
        # Keys 0..n-1: PHP then sends the parts as lists or maps, and we read both.
        params = {
            "halt": 1 if halt else 0,
            "cmd": {str(i): c.as_cmd() for i, c in enumerate(commands)},
        }
        methods = sorted({c.method for c in commands})
        self.observer.batched([c.method for c in commands])
        answer = await self._with_retries(
            "batch",
            params,
            ["batch", *methods],
            creates=any(c.creates for c in commands),
            slot_taken=slot_taken,
        )
        return self._outcomes(commands, answer.get("result"))

    async def list_all(self, method: str, params: Mapping[str, Any]) -> list[Any]:
        """Every row of a list method, following its 50-row pages (``next``)."""
        rows: list[Any] = []
        start: int | None = 0
        while start is not None:
            answer = await self.call(method, {**params, "start": start})
            rows.extend(answer.get("result") or [])
            start = _int_or_none(answer.get("next"))
        return rows

    def _outcomes(self, commands: Sequence[Command], payload: Any) -> list[CommandOutcome]:
        payload = payload if isinstance(payload, Mapping) else {}
        results = by_key(payload.get("result"))
        errors = by_key(payload.get("result_error"))
        totals = by_key(payload.get("result_total"))
        nexts = by_key(payload.get("result_next"))
        times = by_key(payload.get("result_time"))
        outcomes = []
        for index, command in enumerate(commands):
            key = str(index)
            timing = times.get(key)
            if isinstance(timing, Mapping):
                self.budget.report(
                    command.method, timing.get("operating"), timing.get("operating_reset_at")
                )
            error = errors.get(key)
            if error is not None:
                code, description = _error_parts(error)
                if code == "OPERATION_TIME_LIMIT":
                    reset = (
                        timing.get("operating_reset_at") if isinstance(timing, Mapping) else None
                    )
                    self.budget.blocked(command.method, reset)
                outcomes.append(CommandOutcome(error=code, description=description))
            elif key in results:
                outcomes.append(
                    CommandOutcome(
                        result=results[key],
                        total=_int_or_none(totals.get(key)),
                        next=_int_or_none(nexts.get(key)),
                    )
                )
            else:  # halted before it ran
                outcomes.append(CommandOutcome(error="NOT_RUN", description="batch halted"))
        return outcomes

    async def _with_retries(
        self,
        method: str,
        params: dict[str, Any],
        methods: list[str],
        *,
        creates: bool,
        slot_taken: bool,
    ) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(len(self.retry.waits) + 1),
            wait=self._wait,
            retry=retry_if_exception(_safe_to_retry(creates)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.budget.wait(methods)
                if attempt.retry_state.attempt_number > 1 or not slot_taken:
                    await self.bucket.acquire()
                return await self._send(method, params)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, OperationTimeLimit):
            return 0.0  # the next attempt waits on the budget until the reset
        index = min(state.attempt_number, len(self.retry.waits)) - 1
        return self.retry.waits[index]

    async def _send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._exchange(method, params)
        except Bitrix24Error as error:
            outcome = error.code
            raise
        except AmbiguousFailure:
            outcome = "no_answer"
            raise
        finally:
            self.observer.called(method, time.perf_counter() - started, outcome)

    async def _exchange(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.session.post(
                self.endpoint.url(method), json=self.endpoint.body(params), timeout=self.timeout
            ) as response:
                status = response.status
                text = await response.text()
        except aiohttp.ClientConnectorError as error:
            raise AmbiguousFailure(f"cannot connect: {error}", sent=False) from error
        except (TimeoutError, aiohttp.ClientError) as error:
            raise AmbiguousFailure(f"no answer: {error!r}") from error
        data = _json_or_none(text)
        if data is None:
            if status >= 500:
                raise AmbiguousFailure(f"HTTP {status} with a non-JSON body: {text[:80]!r}")
            raise Bitrix24Error(f"HTTP_{status}", text[:200], status)
        raw_timing = data.get("time")
        timing: Mapping[str, Any] = raw_timing if isinstance(raw_timing, Mapping) else {}
        if "error" in data:
            code = str(data["error"])
            description = str(data.get("error_description") or "")
            if code == "QUERY_LIMIT_EXCEEDED":
                raise QueryLimitExceeded(code, description, status)
            if code == "OPERATION_TIME_LIMIT":
                reset = self.budget.blocked(method, timing.get("operating_reset_at"))
                raise OperationTimeLimit(code, description, status, reset)
            raise Bitrix24Error(code, description, status)
        if status >= 400:
            raise Bitrix24Error(f"HTTP_{status}", text[:200], status)
        self.budget.report(method, timing.get("operating"), timing.get("operating_reset_at"))
        return data


def _safe_to_retry(creates: bool) -> Callable[[BaseException], bool]:
    def check(error: BaseException) -> bool:
        if isinstance(error, QueryLimitExceeded | OperationTimeLimit):
            return True
        if isinstance(error, AmbiguousFailure):
            return not creates or not error.sent
        return False

    return check


def _json_or_none(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error_parts(error: Any) -> tuple[str, str]:
    if isinstance(error, Mapping):
        return str(error.get("error") or "ERROR"), str(error.get("error_description") or "")
    return "ERROR", str(error)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None
