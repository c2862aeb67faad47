"""A fake Bitrix24 portal on aiohttp that keeps the real REST shapes and limits.

- ``POST /rest/<user>/<secret>/<method>.json`` (inbound webhook) or ``/rest/<method>.json``
  with ``auth`` (OAuth), JSON bodies; answers ``{"result": ..., "total", "next", "time"}`` or
  ``{"error": ..., "error_description": ...}``.
- ``batch``: ``halt`` and ``cmd`` (at most 50 ``method?query`` strings, PHP query syntax);
  answers ``result.result``, ``result_error``, ``result_total``, ``result_next``,
  ``result_time`` — each an array in PHP's sense, so a list when its keys are 0..n-1 (or
  empty) and a map otherwise.
- ``crm.contact.list`` filters PHONE by exact match only; list methods page by 50.
- The leaky bucket (503 ``QUERY_LIMIT_EXCEEDED``), operating time per method per window
  (429 ``OPERATION_TIME_LIMIT``, ``time.operating`` / ``operating_reset_at``), a latency per
  request, and now and then a 502 HTML page instead of JSON (after the work is done, as a
  proxy that timed out would).

Every refusal is counted in ``violations``: a client that keeps within the limits leaves it
empty.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

PAGE = 50


class CommandError(Exception):
    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(code)
        self.code, self.description, self.status = code, description, status


def parse_php_query(query: str) -> dict[str, Any]:
    """``a[b][0]=x&c=y`` → ``{"a": {"b": ["x"]}, "c": "y"}``."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        head, _, rest = key.partition("[")
        parts = [head] + ([p.rstrip("]") for p in ("[" + rest).split("[")[1:]] if rest else [])
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    parsed: dict[str, Any] = _lists(root)
    return parsed


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and list(node) == [str(i) for i in range(len(node))]:
            return list(node.values())
    return node


def php_array(items: dict[str, Any]) -> Any:
    """How PHP's json_encode writes an array: a list for keys 0..n-1 (and when empty)."""
    if list(items) == [str(i) for i in range(len(items))]:
        return list(items.values())
    return items


@dataclass
class FakeLimits:
    bucket_capacity: float = 50.0
    bucket_drain: float = 2.0
    operating_limit: float = 480.0
    operating_window: float = 600.0
    latency: float = 0.0
    garbage_every: int = 0  # every Nth accepted request answers a 502 HTML page


@dataclass
class FakeBitrix24:
    limits: FakeLimits = field(default_factory=FakeLimits)
    webhook_user: str = "1"
    webhook_secret: str = "s3cret"
    oauth_token: str = "oauth-token"
    refuse_phones: set[str] = field(default_factory=set)
    ident_field: str = "UF_CRM_IDENT_ID"
    clock: Callable[[], float] = time.time

    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    deals: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer next, non-JSON
    # Methods whose next request runs but whose answer is lost (a 502 page instead).
    lose_answer_to: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._level = 0.0
        self._level_at = self.clock()
        self._operating: dict[str, deque[tuple[float, float]]] = {}
        self._operating_sum: dict[str, float] = {}
        # Indexes, so that a portal of many thousand records answers quickly (the bench).
        self._phones: dict[str, list[int]] = {}
        self._idents: dict[str, list[int]] = {}
        self._timeline: dict[str, list[int]] = {}
        self._accepted = 0
        self._lose_this = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- serving ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve on a free port, or on the same port again after ``stop``."""
        app = web.Application()
        app.router.add_post("/rest/{user}/{secret}/{method}", self._webhook)
        app.router.add_post("/rest/{method}", self._oauth)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rest/{self.webhook_user}/{self.webhook_secret}/"

    @property
    def portal_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rest/"

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        if (request.match_info["user"], request.match_info["secret"]) != (
            self.webhook_user,
            self.webhook_secret,
        ):
            return _error("INVALID_CREDENTIALS", "Invalid request credentials", 401)
        return await self._serve(request, await _body(request))

    async def _oauth(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        if body.pop("auth", None) != self.oauth_token:
            return _error("invalid_token", "The access token provided is invalid.", 401)
        return await self._serve(request, body)

    async def _serve(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        method = request.match_info["method"].removesuffix(".json")
        self.requests[method] += 1
        started = self.clock()
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="<html>Bad Gateway</html>")
        if not self._bucket_admits():
            self.violations.append(f"503 QUERY_LIMIT_EXCEEDED on {method}")
            return _error("QUERY_LIMIT_EXCEEDED", "Too many requests", 503)
        if method != "batch" and self._operating_used(method) >= self.limits.operating_limit:
            self.violations.append(f"429 OPERATION_TIME_LIMIT on {method}")
            return _error(
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit.",
                429,
                time=self._time(method, started),
            )
        if self.limits.latency:
            await asyncio.sleep(self.limits.latency)
        try:
            if method == "batch":
                answer = self._batch(body, started)
            else:
                answer = self._call(method, body)
                self._charge(method, self.limits.latency, started)
        except CommandError as error:
            return _error(error.code, error.description, error.status)
        answer["time"] = self._time(method, started)
        self._accepted += 1
        every = self.limits.garbage_every
        lost, self._lose_this = self._lose_this, False
        if lost or (every and self._accepted % every == 0):
            return web.Response(status=502, text="<html><h1>502 Bad Gateway</h1></html>")
        return web.json_response(answer)

    # --- limits -----------------------------------------------------------------------------

    def _bucket_admits(self) -> bool:
        now = self.clock()
        level = max(0.0, self._level - (now - self._level_at) * self.limits.bucket_drain)
        self._level_at = now
        if level + 1 > self.limits.bucket_capacity:
            self._level = level
            return False
        self._level = level + 1
        return True

    def _operating_used(self, method: str) -> float:
        uses = self._operating.setdefault(method, deque())
        horizon = self.clock() - self.limits.operating_window
        while uses and uses[0][0] <= horizon:
            self._operating_sum[method] -= uses.popleft()[1]
        return max(0.0, self._operating_sum.get(method, 0.0))

    def _charge(self, method: str, seconds: float, at: float) -> None:
        self._operating.setdefault(method, deque()).append((at, seconds))
        self._operating_sum[method] = self._operating_sum.get(method, 0.0) + seconds

    def _time(self, method: str, started: float) -> dict[str, Any]:
        finished = self.clock()
        uses = self._operating.get(method) or deque()
        reset_at = (uses[0][0] if uses else finished) + self.limits.operating_window
        return {
            "start": started,
            "finish": finished,
            "duration": finished - started,
            "processing": finished - started,
            "date_start": datetime.fromtimestamp(started, UTC).isoformat(),
            "date_finish": datetime.fromtimestamp(finished, UTC).isoformat(),
            "operating": round(self._operating_used(method), 3),
            "operating_reset_at": reset_at,
        }

    # --- batch ------------------------------------------------------------------------------

    def _batch(self, body: dict[str, Any], started: float) -> dict[str, Any]:
        commands = body.get("cmd") or {}
        if isinstance(commands, list):
            commands = {str(i): c for i, c in enumerate(commands)}
        if not isinstance(commands, dict) or not commands:
            raise CommandError("INVALID_ARG_VALUE", "cmd is empty")
        if len(commands) > PAGE:
            self.violations.append(f"batch of {len(commands)} commands")
            raise CommandError("ERROR_BATCH_LENGTH_EXCEEDED", "Max batch length exceeded")
        self.batch_sizes.append(len(commands))
        halt = str(body.get("halt", 0)) in ("1", "true", "Y")
        share = self.limits.latency / len(commands)
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        totals: dict[str, Any] = {}
        nexts: dict[str, Any] = {}
        times: dict[str, Any] = {}
        for key, cmd in commands.items():
            method, _, query = str(cmd).partition("?")
            params = parse_php_query(query)
            try:
                if self._operating_used(method) >= self.limits.operating_limit:
                    self.violations.append(f"OPERATION_TIME_LIMIT on {method} in a batch")
                    raise CommandError(
                        "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit."
                    )
                answer = self._call(method, params)
            except CommandError as error:
                errors[key] = {"error": error.code, "error_description": error.description}
                times[key] = self._time(method, started)
                if halt:
                    break
                continue
            self._charge(method, share, started)
            results[key] = answer["result"]
            if "total" in answer:
                totals[key] = answer["total"]
            if "next" in answer:
                nexts[key] = answer["next"]
            times[key] = self._time(method, started)
        return {
            "result": {
                "result": php_array(results),
                "result_error": php_array(errors),
                "result_total": php_array(totals),
                "result_next": php_array(nexts),
                "result_time": php_array(times),
            }
        }

    # --- methods ----------------------------------------------------------------------------

    def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.commands[method] += 1
        if method in self.lose_answer_to:
            self.lose_answer_to.remove(method)
            self._lose_this = True
        handler = {
            "crm.contact.list": self._contact_list,
            "crm.contact.add": self._contact_add,
            "crm.contact.get": self._contact_get,
            "crm.contact.update": self._contact_update,
            "crm.deal.list": self._deal_list,
            "crm.deal.add": self._deal_add,
            "crm.deal.get": self._deal_get,
            "crm.deal.update": self._deal_update,
            "crm.timeline.comment.add": self._comment_add,
            "crm.timeline.comment.list": self._comment_list,
        }.get(method)
        if handler is None:
            raise CommandError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
        return handler(params)

    def _contact_list(self, params: dict[str, Any]) -> dict[str, Any]:
        flt = params.get("filter") or {}
        if "PHONE" in flt:
            # A multiple field: exact match only, as in Bitrix24.
            rows = [self.contacts[i] for i in self._phones.get(str(flt["PHONE"]), [])]
        else:
            rows = list(self.contacts.values())
        if "ID" in flt:
            rows = [r for r in rows if r["ID"] == str(flt["ID"])]
        return _page(rows, params)

    def _contact_add(self, params: dict[str, Any]) -> dict[str, Any]:
        fields = params.get("fields") or {}
        phones = fields.get("PHONE") or []
        for phone in phones:
            if phone.get("VALUE") in self.refuse_phones:
                raise CommandError("ERROR_CORE", f"PHONE: '{phone['VALUE']}' is not a valid number")
        contact_id = next(self._ids)
        for phone in phones:
            self._phones.setdefault(str(phone.get("VALUE")), []).append(contact_id)
        self.contacts[contact_id] = {
            "ID": str(contact_id),
            "NAME": fields.get("NAME", ""),
            "PHONE": [
                {
                    "ID": str(next(self._ids)),
                    "VALUE": p.get("VALUE"),
                    "VALUE_TYPE": p.get("VALUE_TYPE"),
                }
                for p in phones
            ],
        }
        return {"result": contact_id}

    def _contact_get(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"result": self._get(self.contacts, params)}

    def _contact_update(self, params: dict[str, Any]) -> dict[str, Any]:
        row = self._get(self.contacts, params)
        row.update({k: v for k, v in (params.get("fields") or {}).items() if k != "PHONE"})
        return {"result": True}

    def _deal_list(self, params: dict[str, Any]) -> dict[str, Any]:
        flt = params.get("filter") or {}
        rows = list(self.deals.values())
        for key in (self.ident_field, f"={self.ident_field}", f"@{self.ident_field}"):
            if key in flt:
                wanted = flt[key] if isinstance(flt[key], list) else [flt[key]]
                ids = {i for value in wanted for i in self._idents.get(str(value), [])}
                rows = [self.deals[i] for i in sorted(ids)]
        for key, wanted in flt.items():
            if key.startswith("@"):
                allowed = {str(v) for v in (wanted if isinstance(wanted, list) else [wanted])}
                rows = [r for r in rows if str(r.get(key[1:])) in allowed]
            else:
                name = key.removeprefix("=")
                rows = [r for r in rows if str(r.get(name)) == str(wanted)]
        return _page(rows, params)

    def _deal_add(self, params: dict[str, Any]) -> dict[str, Any]:
        fields = {k: _text(v) for k, v in (params.get("fields") or {}).items()}
        deal_id = next(self._ids)
        self.deals[deal_id] = {**fields, "ID": str(deal_id)}
        self._index_deal(deal_id)
        return {"result": deal_id}

    def _deal_get(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"result": self._get(self.deals, params)}

    def _deal_update(self, params: dict[str, Any]) -> dict[str, Any]:
        row = self._get(self.deals, params)
        row.update({k: _text(v) for k, v in (params.get("fields") or {}).items()})
        self._index_deal(int(row["ID"]))
        return {"result": True}

    def _index_deal(self, deal_id: int) -> None:
        ident = self.deals[deal_id].get(self.ident_field)
        if ident is not None and deal_id not in self._idents.get(str(ident), []):
            self._idents.setdefault(str(ident), []).append(deal_id)

    def _comment_add(self, params: dict[str, Any]) -> dict[str, Any]:
        fields = params.get("fields") or {}
        if (
            fields.get("ENTITY_TYPE") != "deal"
            or int(fields.get("ENTITY_ID") or 0) not in self.deals
        ):
            raise CommandError("NOT_FOUND", "Not found")
        comment_id = next(self._ids)
        self._timeline.setdefault(str(fields["ENTITY_ID"]), []).append(comment_id)
        self.comments[comment_id] = {
            "ID": str(comment_id),
            "ENTITY_ID": str(fields["ENTITY_ID"]),
            "ENTITY_TYPE": "deal",
            "COMMENT": fields.get("COMMENT", ""),
        }
        return {"result": comment_id}

    def _comment_list(self, params: dict[str, Any]) -> dict[str, Any]:
        flt = params.get("filter") or {}
        candidates = self._timeline.get(str(flt.get("ENTITY_ID")), [])
        rows = [
            c
            for c in (self.comments[i] for i in candidates)
            if c["ENTITY_ID"] == str(flt.get("ENTITY_ID"))
            and c["ENTITY_TYPE"] == flt.get("ENTITY_TYPE")
        ]
        return _page(rows, params)

    def _get(self, table: dict[int, dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        try:
            return table[int(params.get("id") or params.get("ID") or 0)]
        except (KeyError, ValueError):
            raise CommandError("NOT_FOUND", "Not found") from None

    # --- for set-up and assertions -----------------------------------------------------------

    def seed(self, method: str, params: Mapping[str, Any]) -> Any:
        """Run a method directly, outside every limit (a portal's state before a test)."""
        return self._call(method, dict(params))["result"]

    def delete_deal(self, deal_id: int) -> None:
        """A manager deletes the deal in the portal's UI."""
        deal = self.deals.pop(deal_id)
        self._idents.get(str(deal.get(self.ident_field)), []).remove(deal_id)

    def reset_counters(self) -> None:
        self.requests.clear()
        self.commands.clear()
        self.violations.clear()
        self.batch_sizes.clear()

    def deal_by_ident(self, ident: str) -> list[dict[str, Any]]:
        return [d for d in self.deals.values() if d.get(self.ident_field) == ident]

    def comments_on(self, deal_id: str | int) -> list[str]:
        return [c["COMMENT"] for c in self.comments.values() if c["ENTITY_ID"] == str(deal_id)]

    def contacts_with_phone(self, phone: str) -> list[dict[str, Any]]:
        return [c for c in self.contacts.values() if any(p["VALUE"] == phone for p in c["PHONE"])]


def _page(rows: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    order = params.get("order") or {}
    descending = str(order.get("ID", "ASC")).upper() == "DESC"
    rows = sorted(rows, key=lambda r: int(r["ID"]), reverse=descending)
    select = params.get("select") or []
    if select and "*" not in select:
        rows = [{k: v for k, v in r.items() if k in select or k == "ID"} for r in rows]
    start = int(params.get("start") or 0)
    page = rows[start : start + PAGE]
    answer: dict[str, Any] = {"result": page, "total": len(rows)}
    if start + PAGE < len(rows):
        answer["next"] = start + PAGE
    return answer


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        data = await request.json()
        return data if isinstance(data, dict) else {}
    return parse_php_query(await request.text())


def _error(code: str, description: str, status: int, **extra: Any) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": code, "error_description": description, **extra}),
        content_type="application/json",
    )
