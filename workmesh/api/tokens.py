"""Token routes (admin only): make, list and revoke producer and admin tokens."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from workmesh.api.common import SESSIONS, ApiError, json_response, principal, read_body
from workmesh.security import Role
from workmesh.services import tokens

routes = web.RouteTableDef()


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    role: Role = Role.PRODUCER


@routes.post("/api/v1/tokens")
async def add_token(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    spec = await read_body(request, TokenCreate)
    async with request.app[SESSIONS]() as session, session.begin():
        try:
            token = await tokens.create_api_token(session, spec.name, spec.role)
        except tokens.TokenNameTaken as error:
            raise ApiError(409, str(error)) from None
        except ValueError as error:  # a worker token: those come with the worker
            raise ApiError(422, str(error)) from None
    body = {"name": spec.name, "role": spec.role.value, "token": token}
    return json_response(body | {"note": "the token is shown once; keep it"}, status=201)


@routes.get("/api/v1/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    async with request.app[SESSIONS]() as session:
        rows = await tokens.api_tokens(session)
    listing = [{"name": t.name, "role": t.role, "created_at": t.created_at} for t in rows]
    return json_response({"tokens": listing})


@routes.delete("/api/v1/tokens/{name}")
async def revoke_token(request: web.Request) -> web.Response:
    principal(request, Role.ADMIN)
    async with request.app[SESSIONS]() as session, session.begin():
        try:
            await tokens.revoke_api_token(session, request.match_info["name"])
        except tokens.UnknownToken as error:
            raise ApiError(404, str(error)) from None
    return web.Response(status=204)
