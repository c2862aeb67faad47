"""The Orders API: create, read, list (keyset cursor, updated-since), update, delete (a
tombstone), resolve a collision or error, and the peer's sync endpoint. Every change that
must reach the peer publishes ``orders.changed`` after its commit."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.orders import Order
from schemas.orders import OrderBody, OrderCreate, Resolve, Snapshot, SnapshotBatch
from workmesh.api.common import ApiError, json_response, principal, read_body
from workmesh.orders import service
from workmesh.orders.service import OrderProblem
from workmesh.security import Role

log = logging.getLogger(__name__)

PREFIX = "/api/v1/orders"
MAX_PAGE = 1000

Publish = Callable[[str, int], Awaitable[None]]


def encode_cursor(at: datetime, order_id: str) -> str:
    raw = json.dumps([at.isoformat(), order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at, order_id = json.loads(raw)
        when = datetime.fromisoformat(at)
    except (ValueError, TypeError) as error:
        raise ApiError(422, f"a bad cursor: {error}") from None
    if when.tzinfo is None or not isinstance(order_id, str):
        raise ApiError(422, "a bad cursor")
    return when, order_id


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(422, "updated_since is an ISO 8601 time with a zone") from None
    if when.tzinfo is None:
        raise ApiError(422, "updated_since is an ISO 8601 time with a zone")
    return when


def _order_id(request: web.Request) -> str:
    try:
        return str(uuid.UUID(request.match_info["id"]))
    except ValueError:
        raise ApiError(422, "an order id is a UUID") from None


def _if_match(request: web.Request) -> int | None:
    header = request.headers.get("If-Match")
    if header is None:
        return None
    try:
        return int(header.strip('"'))
    except ValueError:
        raise ApiError(422, "If-Match is the order's revision, a number") from None


def add_routes(
    app: web.Application,
    sessions: async_sessionmaker[AsyncSession],
    publish: Publish,
    instance: str,
    parallel: int = 8,
) -> None:
    roles = (Role.ADMIN, Role.PRODUCER)
    # Writes wait here rather than for a pooled connection: under a burst, transactions that
    # hold an order's row lock then finish quickly instead of queueing behind the pool (which
    # ends in pool timeouts and lock waits that feed each other).
    writes = asyncio.Semaphore(parallel)

    async def create(request: web.Request) -> web.Response:
        principal(request, *roles)
        data = await read_body(request, OrderCreate)
        try:
            async with writes, sessions() as session, session.begin():
                order, created = await service.create(session, data, instance)
        except OrderProblem as problem:
            raise ApiError(problem.status, str(problem)) from None
        if created:
            await publish(order.id, order.rev)
        return json_response(service.out(order), 201 if created else 200)

    async def read(request: web.Request) -> web.Response:
        principal(request, *roles)
        order_id = _order_id(request)
        async with sessions() as session:
            try:
                order = await service.get(session, order_id)
            except OrderProblem as problem:
                raise ApiError(problem.status, str(problem)) from None
            return json_response(service.out(order))

    async def listing(request: web.Request) -> web.Response:
        principal(request, *roles)
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise ApiError(422, "limit is a number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(422, f"limit is 1..{MAX_PAGE}")
        since = _since(query.get("updated_since"))
        after = decode_cursor(query["cursor"]) if "cursor" in query else None
        async with sessions() as session:
            orders = await service.page(session, since, after, limit)
        last = orders[-1] if len(orders) == limit else None
        return json_response(
            {
                "orders": [service.out(o) for o in orders],
                "next": encode_cursor(last.updated_at, last.id) if last is not None else None,
            }
        )

    async def change(request: web.Request) -> web.Response:
        principal(request, *roles)
        order_id = _order_id(request)
        body = await read_body(request, OrderBody)
        try:
            async with writes, sessions() as session, session.begin():
                order, changed = await service.update(session, order_id, body, _if_match(request))
        except OrderProblem as problem:
            raise ApiError(problem.status, str(problem)) from None
        if changed:
            await publish(order.id, order.rev)
        return json_response(service.out(order))

    async def remove(request: web.Request) -> web.Response:
        principal(request, *roles)
        order_id = _order_id(request)
        try:
            async with writes, sessions() as session, session.begin():
                order, changed = await service.delete(session, order_id, _if_match(request))
        except OrderProblem as problem:
            raise ApiError(problem.status, str(problem)) from None
        if changed:
            await publish(order.id, order.rev)
        return json_response(service.out(order))

    async def resolve(request: web.Request) -> web.Response:
        principal(request, *roles)
        order_id = _order_id(request)
        choice = await read_body(request, Resolve)
        try:
            async with writes, sessions() as session, session.begin():
                order = await service.resolve(session, order_id, choice)
        except OrderProblem as problem:
            raise ApiError(problem.status, str(problem)) from None
        await publish(order.id, order.rev)
        return json_response(service.out(order))

    async def sync(request: web.Request) -> web.Response:
        """The peer's snapshot of one order, through the transition table."""
        principal(request, *roles)
        order_id = _order_id(request)
        snap = await read_body(request, Snapshot)
        if snap.sender == instance:
            raise ApiError(422, f"this is instance {instance}: a snapshot from itself")
        async with writes, sessions() as session, session.begin():
            result = await _receive(session, order_id, snap)
        if result["send_back"]:
            await publish(order_id, result["rev"])
        return json_response({k: result[k] for k in ("outcome", "state", "send_back")})

    async def sync_many(request: web.Request) -> web.Response:
        """The peer's snapshots of several orders, each through the transition table, in one
        transaction; if that fails, each in a transaction of its own (one bad apple — say a
        new order the pull inserted meanwhile — then fails alone). The answer lists each
        order's outcome, or its error, in the order sent."""
        principal(request, *roles)
        batch = await read_body(request, SnapshotBatch)
        if any(item.sender == instance for item in batch.snapshots):
            raise ApiError(422, f"this is instance {instance}: snapshots from itself")
        items = [(str(item.id), Snapshot.model_validate(item, from_attributes=True))
                 for item in batch.snapshots]  # fmt: skip
        answers = batch.answers
        # Applied in id order (an order's own snapshots keep theirs): every transaction that
        # locks several orders takes them in that order, so two never deadlock.
        applying = sorted(range(len(items)), key=lambda n: items[n][0])
        results: list[dict[str, Any]] = [{} for _ in items]
        try:
            async with writes, sessions() as session, session.begin():
                received = await service.receive_many(session, [items[n] for n in applying])
                for n, outcome in zip(applying, received, strict=True):
                    results[n] = _result(await service.get(session, items[n][0]), outcome, answers)
        except SQLAlchemyError as error:
            log.info("orders: a batch of %d failed whole (%s); one by one", len(items), error)
            for n in applying:
                results[n] = await _receive_alone(*items[n], answers)
        # Answers not carried in the response go the usual way: an event, then a push.
        await asyncio.gather(
            *(publish(r["id"], r["rev"]) for r in results if r.get("send_back") and not answers)
        )
        for result in results:
            result.pop("rev", None)
        return json_response({"results": results})

    async def _receive(
        session: AsyncSession, order_id: str, snap: Snapshot, answer: bool = False
    ) -> dict[str, Any]:
        result = await service.receive(session, order_id, snap)
        return _result(await service.get(session, order_id), result, answer)

    def _result(order: Order, result: service.Received, answer: bool) -> dict[str, Any]:
        done = {"id": order.id, "outcome": result.outcome, "state": result.state.name,
                "send_back": result.send_back, "rev": order.rev}  # fmt: skip
        if answer and result.send_back:
            done["answer"] = service.snapshot(order, instance).model_dump(mode="json")
            service.answered(order)
        return done

    async def _receive_alone(order_id: str, snap: Snapshot, answer: bool) -> dict[str, Any]:
        try:
            async with writes, sessions() as session, session.begin():
                return await _receive(session, order_id, snap, answer)
        except SQLAlchemyError as error:
            return {"id": order_id, "error": f"not applied, send again: {type(error).__name__}"}

    app.router.add_post(PREFIX, create)
    app.router.add_get(PREFIX, listing)
    app.router.add_get(PREFIX + "/{id}", read)
    app.router.add_put(PREFIX + "/{id}", change)
    app.router.add_delete(PREFIX + "/{id}", remove)
    app.router.add_post(PREFIX + "/{id}/resolve", resolve)
    app.router.add_put(PREFIX + "/{id}/sync", sync)
    app.router.add_post(PREFIX + "/sync", sync_many)
