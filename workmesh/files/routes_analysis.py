"""HTTP: the analysis result, status reports, comments and the recommendation against a
refer key; the violation-type reference list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from sqlalchemy import select

from models.base import utcnow
from models.files import FileComment, FileRecommendation, StoredFile, ViolationType
from schemas.files import CommentCreate, StatusChange, ViolationTypeBody, ViolationTypePatch
from workmesh.api.common import ApiError, json_response, principal, read_body
from workmesh.files import analysis, intake, refers
from workmesh.files.runtime import FilesRuntime
from workmesh.files.storage import PIECE, Missing
from workmesh.files.violations import Row, upsert
from workmesh.security import Role

ANALYSERS = (Role.ADMIN, Role.WORKER)


def result_key(file_id: str) -> str:
    return f"results/{file_id}"


class AnalysisRoutes:
    def __init__(self, runtime: FilesRuntime) -> None:
        self.rt = runtime

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/v1/refers/{refer}/result", self.upload_result)
        r.add_post("/api/v1/refers/{refer}/status", self.change_status)
        r.add_post("/api/v1/refers/{refer}/comments", self.add_comment)
        r.add_post("/api/v1/refers/{refer}/recommendation", self.recommend)
        r.add_get("/api/v1/files/{id}/result", self.download_result)
        r.add_get("/api/v1/files/{id}/comments", self.list_comments)
        r.add_get("/api/v1/files/{id}/recommendation", self.show_recommendation)
        r.add_get("/api/v1/violation-types", self.list_violation_types)
        r.add_post("/api/v1/violation-types", self.add_violation_type)
        r.add_patch("/api/v1/violation-types/{code}", self.edit_violation_type)
        r.add_delete("/api/v1/violation-types/{code}", self.delete_violation_type)

    async def _file_of(self, refer: str) -> StoredFile:
        # The key of the file's current cycle names the file even after the cycle ended:
        # an analysis may take longer than the key lived. A replaced key does not.
        async with self.rt.sessions() as session:
            return await refers.find_by_key(session, refer, utcnow(), check_expiry=False)

    async def upload_result(self, request: web.Request) -> web.Response:
        principal(request, *ANALYSERS)
        file = await self._file_of(request.match_info["refer"])
        limit = self.rt.settings.max_result_size
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"a result larger than {limit} bytes is refused")
        arrived = 0

        async def pieces() -> AsyncIterator[bytes]:
            nonlocal arrived
            async for piece in request.content.iter_chunked(PIECE):
                arrived += len(piece)
                if arrived > limit:
                    raise ApiError(413, f"a result larger than {limit} bytes is refused")
                yield piece

        size = await self.rt.storage.write(result_key(file.id), pieces())
        if size == 0:
            raise ApiError(400, "the result is empty")
        content_type = request.headers.get("Content-Type", "application/octet-stream")[:127]
        async with self.rt.sessions() as session, session.begin():
            announcements = await analysis.record_result(session, file.id, size, content_type)
        await self.rt.bus.announce(announcements)
        return json_response({"file_id": file.id, "size": size, "status": "ready"}, status=201)

    async def download_result(self, request: web.Request) -> web.StreamResponse:
        principal(request)
        async with self.rt.sessions() as session:
            file = await intake.load(session, request.match_info["id"])
        if file.result_at is None:
            raise ApiError(404, "no analysis result has been uploaded for this file")
        response = web.StreamResponse(
            headers={"Content-Type": file.result_content_type or "application/octet-stream"}
        )
        response.content_length = file.result_size
        await response.prepare(request)
        try:
            async for piece in self.rt.storage.read(result_key(file.id)):
                await response.write(piece)
        except Missing:
            raise ApiError(500, "the result's bytes are missing from storage") from None
        await response.write_eof()
        return response

    async def change_status(self, request: web.Request) -> web.Response:
        principal(request, *ANALYSERS)
        body = await read_body(request, StatusChange)
        file = await self._file_of(request.match_info["refer"])
        async with self.rt.sessions() as session, session.begin():
            announcements = await analysis.change_status(session, file.id, body)
        await self.rt.bus.announce(announcements)
        return json_response({"file_id": file.id, "status": body.status})

    async def add_comment(self, request: web.Request) -> web.Response:
        who = principal(request)
        body = await read_body(request, CommentCreate)
        file = await self._file_of(request.match_info["refer"])
        async with self.rt.sessions() as session, session.begin():
            comment = await analysis.add_comment(session, file.id, body, who.name)
        return json_response(_comment(comment), status=201)

    async def list_comments(self, request: web.Request) -> web.Response:
        principal(request)
        async with self.rt.sessions() as session:
            file = await intake.load(session, request.match_info["id"])
            comments = await analysis.comments_of(session, file.id)
        return json_response({"comments": [_comment(c) for c in comments]})

    async def recommend(self, request: web.Request) -> web.Response:
        principal(request)
        file = await self._file_of(request.match_info["refer"])
        async with self.rt.sessions() as session, session.begin():
            row, announcements = await analysis.recommend(session, file.id)
        await self.rt.bus.announce(announcements)
        return json_response(_recommendation(row), status=201)

    async def show_recommendation(self, request: web.Request) -> web.Response:
        principal(request)
        async with self.rt.sessions() as session:
            row = await session.get(FileRecommendation, request.match_info["id"])
        if row is None:
            raise ApiError(404, "no recommendation for this file yet")
        return json_response(_recommendation(row))

    async def list_violation_types(self, request: web.Request) -> web.Response:
        principal(request)
        async with self.rt.sessions() as session:
            rows = (
                await session.execute(select(ViolationType).order_by(ViolationType.code))
            ).scalars()
            return json_response({"violation_types": [_violation(v) for v in rows]})

    async def add_violation_type(self, request: web.Request) -> web.Response:
        principal(request, Role.ADMIN)
        body = await read_body(request, ViolationTypeBody)
        async with self.rt.sessions() as session, session.begin():
            if await session.get(ViolationType, body.code) is not None:
                raise ApiError(409, f"violation type {body.code!r} exists; PATCH it instead")
            await upsert(session, [Row(body.code, body.name, body.description)])
        return json_response(body.model_dump(), status=201)

    async def edit_violation_type(self, request: web.Request) -> web.Response:
        principal(request, Role.ADMIN)
        body = await read_body(request, ViolationTypePatch)
        async with self.rt.sessions() as session, session.begin():
            row = await session.get(ViolationType, request.match_info["code"])
            if row is None:
                raise ApiError(404, f"no violation type {request.match_info['code']!r}")
            if body.name is not None:
                row.name = body.name
            if "description" in body.model_fields_set:
                row.description = body.description
            return json_response(_violation(row))

    async def delete_violation_type(self, request: web.Request) -> web.Response:
        principal(request, Role.ADMIN)
        code = request.match_info["code"]
        async with self.rt.sessions() as session, session.begin():
            row = await session.get(ViolationType, code)
            if row is None:
                raise ApiError(404, f"no violation type {code!r}")
            used = await session.scalar(
                select(FileComment.id).where(FileComment.violation_code == code).limit(1)
            )
            if used is not None:
                raise ApiError(409, f"violation type {code!r} is named by comments; keep it")
            await session.delete(row)
        return web.Response(status=204)


def _comment(c: FileComment) -> dict[str, Any]:
    return {
        "id": c.id,
        "file_id": c.file_id,
        "author": c.author,
        "text": c.text,
        "severity": c.severity,
        "violation_code": c.violation_code,
        "created_by": c.created_by,
        "created_at": c.created_at.isoformat(),
    }


def _recommendation(r: FileRecommendation) -> dict[str, Any]:
    return {
        "file_id": r.file_id,
        "user": r.user_text,
        "ai": r.ai_text,
        "severity": r.severity,
        "violation_codes": r.violation_codes,
        "comments": r.comments,
        "created_at": r.created_at.isoformat(),
    }


def _violation(v: ViolationType) -> dict[str, Any]:
    return {"code": v.code, "name": v.name, "description": v.description}
