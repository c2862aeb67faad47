"""What every route shares: JSON errors with a reason, body parsing, authentication."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from workmesh.metrics import Metrics
from workmesh.security import Principal, Role
from workmesh.services.counts import StatusCounts
from workmesh.services.group_commit import GroupCommit
from workmesh.services.tokens import authenticate
from workmesh.settings import Settings

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", Settings)
SESSIONS: web.AppKey[async_sessionmaker[AsyncSession]] = web.AppKey("sessions")
METRICS = web.AppKey("metrics", Metrics)
# One per process: stats and the overview share its finished counts (spaced out on a big table).
STATUS_COUNTS = web.AppKey("status_counts", StatusCounts)
# One per process: the workers' hand-outs and status changes, committed in shared transactions.
WRITES = web.AppKey("writes", GroupCommit)
PRINCIPAL = web.RequestKey("principal", Principal)
TOKEN = web.RequestKey("token", str)


class ApiError(Exception):
    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status, self.reason, self.extra = status, reason, extra


def json_response(body: Any, status: int = 200) -> web.Response:
    if isinstance(body, BaseModel):
        text = body.model_dump_json()
    else:
        text = json.dumps(body, default=_default)
    return web.Response(text=text, status=status, content_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


async def read_body(request: web.Request, model: type[Model]) -> Model:
    raw = await request.read()
    try:
        data = json.loads(raw or b"null")
    except ValueError as error:
        raise ApiError(400, f"malformed JSON: {error}") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "error": e["msg"]}
            for e in error.errors()
        ]
        raise ApiError(422, "the body does not match the schema", details=details) from None


def principal(request: web.Request, *roles: Role) -> Principal:
    """The caller, who must hold one of ``roles`` (any role when none are named)."""
    who: Principal | None = request.get(PRINCIPAL)
    if who is None:
        raise ApiError(401, "a valid token is required: 'Authorization: Bearer <token>'")
    if roles and who.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise ApiError(403, f"this needs a token of role {allowed}; yours is {who.role.value}")
    return who


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    try:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if header and scheme.lower() != "bearer":
            raise ApiError(401, "the Authorization header must be 'Bearer <token>'")
        if token:
            async with request.app[SESSIONS]() as session:
                found = await authenticate(
                    session, token.strip(), request.app[SETTINGS].security.admin_token
                )
            if found is None:
                raise ApiError(401, "unknown token")
            request[PRINCIPAL] = found
            request[TOKEN] = token.strip()
        response = await handler(request)
    except ApiError as error:
        response = json_response({"error": error.reason, **error.extra}, status=error.status)
    except web.HTTPException as error:
        response = json_response({"error": error.reason}, status=error.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = json_response({"error": "internal error; the server log has the details"}, 500)
    metrics.http_requests.labels(route=route, status=str(response.status)).inc()
    return response
