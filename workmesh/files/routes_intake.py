"""HTTP: upload in chunks, file state, key restart, download by refer key, SSE."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web

from models.base import utcnow
from models.files import StoredFile
from schemas.files import UploadCreate
from workmesh.api.common import PRINCIPAL, ApiError, json_response, principal, read_body
from workmesh.files import intake, refers
from workmesh.files.downloads import TooManyDownloaders
from workmesh.files.events import download_url
from workmesh.files.intake import chunk_count, received_chunks
from workmesh.files.ranges import BadRange, parse_range
from workmesh.files.runtime import FilesRuntime
from workmesh.files.sse import stream_events
from workmesh.security import Role

log = logging.getLogger(__name__)

UPLOADERS = (Role.ADMIN, Role.PRODUCER)


class IntakeRoutes:
    def __init__(self, runtime: FilesRuntime) -> None:
        self.rt = runtime

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/api/v1/files", self.create)
        r.add_get("/api/v1/files/{id}", self.show)
        r.add_put("/api/v1/files/{id}/chunks/{index:\\d+}", self.put_chunk)
        r.add_post("/api/v1/files/{id}/complete", self.complete)
        r.add_post("/api/v1/files/{id}/refer", self.restart_refer)
        r.add_get("/api/v1/files/{id}/events", self.events)
        r.add_get("/files/download/{refer}", self.download)

    async def create(self, request: web.Request) -> web.Response:
        who = principal(request, *UPLOADERS)
        body = await read_body(request, UploadCreate)
        async with self.rt.sessions() as session, session.begin():
            file = await intake.create_upload(
                session, self.rt.storage, self.rt.settings, body, who.name
            )
        return json_response(await self._view(file), status=201)

    async def show(self, request: web.Request) -> web.Response:
        principal(request)
        async with self.rt.sessions() as session:
            file = await intake.load(session, request.match_info["id"])
        return json_response(await self._view(file))

    async def put_chunk(self, request: web.Request) -> web.Response:
        principal(request, *UPLOADERS)
        index = int(request.match_info["index"])
        try:
            async with self.rt.sessions() as session:
                receipt = await intake.receive_chunk(
                    session,
                    self.rt.storage,
                    request.match_info["id"],
                    index,
                    request.headers.get("X-Chunk-Sha256"),
                    request.content_length,
                    request.content,
                )
        except ApiError:
            self.rt.metrics.chunks.labels(outcome="refused").inc()
            raise
        if receipt.already:
            self.rt.metrics.chunks.labels(outcome="duplicate").inc()
        else:
            self.rt.metrics.chunks.labels(outcome="stored").inc()
            self.rt.metrics.upload_bytes.inc(receipt.size)
        return json_response(
            {
                "index": receipt.index,
                "size": receipt.size,
                "sha256": receipt.sha256,
                "already_had_it": receipt.already,
            },
            status=200 if receipt.already else 201,
        )

    async def complete(self, request: web.Request) -> web.Response:
        principal(request, *UPLOADERS)
        async with self.rt.sessions() as session:
            await self._chain_ready()
            file, announcements, _ = await intake.complete_upload(
                session,
                self.rt.storage,
                self.rt.schedule,
                self.rt.public_url,
                request.match_info["id"],
            )
        await self.rt.bus.announce(announcements)  # the refer.issued event starts the chain
        if file.stored_at is None:
            raise ApiError(422, f"{file.error}; the upload is void, start a new one")
        return json_response(await self._view(file))

    async def restart_refer(self, request: web.Request) -> web.Response:
        principal(request, *UPLOADERS)
        await self._chain_ready()
        async with self.rt.sessions() as session, session.begin():
            file, announcements, _ = await refers.restart_key(
                session, request.match_info["id"], self.rt.schedule, self.rt.public_url
            )
        await self.rt.bus.announce(announcements)
        return json_response(self._refer_view(file), status=201)

    async def events(self, request: web.Request) -> web.StreamResponse:
        principal(request)
        file_id = request.match_info["id"]
        async with self.rt.sessions() as session:
            await intake.load(session, file_id)
        raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
        try:
            after = int(raw)
        except ValueError:
            raise ApiError(
                400, f"Last-Event-ID must be an event id (an integer), not {raw!r}"
            ) from None
        return await stream_events(request, self.rt, file_id, after)

    async def download(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["refer"]
        async with self.rt.sessions() as session:
            try:
                file = await refers.find_by_key(session, key, utcnow())
            except ApiError:
                self.rt.metrics.downloads.labels(outcome="refused").inc()
                raise
        try:
            wanted = parse_range(request.headers.get("Range"), file.size)
        except BadRange as error:
            refused = json_response({"error": str(error)}, status=416)
            refused.headers["Content-Range"] = f"bytes */{file.size}"
            return refused
        try:
            with self.rt.limiter.slot(file.id):
                return await self._serve(request, file, wanted)
        except TooManyDownloaders:
            self.rt.metrics.downloads.labels(outcome="busy").inc()
            response = json_response(
                {
                    "error": f"this file already has {self.rt.limiter.limit} downloads "
                    "running, the most allowed at once; try again when one finishes",
                    "limit": self.rt.limiter.limit,
                },
                status=429,
            )
            response.headers["Retry-After"] = "5"
            return response

    async def _serve(
        self, request: web.Request, file: StoredFile, wanted: Any
    ) -> web.StreamResponse:
        who = request.get(PRINCIPAL)
        # The parser (an analysis worker) starting a download; a HEAD downloads nothing.
        if who is not None and who.role is Role.WORKER and request.method == "GET":
            async with self.rt.sessions() as session, session.begin():
                announcements = await refers.mark_parser_download(
                    session, file.id, file.refer_generation, self.rt.settings.stop_on_download
                )
            await self.rt.bus.announce(announcements)
        start, length = (0, file.size) if wanted is None else (wanted.start, wanted.length)
        response = web.StreamResponse(status=200 if wanted is None else 206)
        response.headers.update(
            {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(file.name)}",
                "Accept-Ranges": "bytes",
                "ETag": f'"{file.sha256}"',
                "Cache-Control": "no-store",
            }
        )
        if wanted is not None:
            response.headers["Content-Range"] = wanted.content_range(file.size)
        response.content_length = length
        await response.prepare(request)
        self.rt.metrics.downloads.labels(outcome="served").inc()
        if request.method == "HEAD":
            return response
        try:
            async for piece in self.rt.storage.read(intake.file_key(file.id), start, length):
                await response.write(piece)
            await response.write_eof()
        except ConnectionResetError:
            log.info("a download of %s was broken off by the client", file.id)
        return response

    async def _chain_ready(self) -> None:
        # The HTTP server starts a moment before the capability has bound its queues.
        try:
            await asyncio.wait_for(self.rt.chain_ready.wait(), timeout=10)
        except TimeoutError:
            raise ApiError(503, "the files capability is still starting; try again") from None

    async def _view(self, file: StoredFile) -> dict[str, Any]:
        async with self.rt.sessions() as session:
            have = await received_chunks(session, file.id)
        count = chunk_count(file)
        view: dict[str, Any] = {
            "id": file.id,
            "name": file.name,
            "size": file.size,
            "sha256": file.sha256,
            "chunk_size": file.chunk_size,
            "chunks": count,
            "received": len(have),
            "missing": [i for i in range(count) if i not in have][:1000],
            "status": file.status,
            "error": file.error,
            "stored_at": file.stored_at,
            "refer": self._refer_view(file) if file.refer_key else None,
            "result": {
                "size": file.result_size,
                "content_type": file.result_content_type,
                "uploaded_at": file.result_at,
            }
            if file.result_at
            else None,
        }
        return _plain(view)

    def _refer_view(self, file: StoredFile) -> dict[str, Any]:
        assert file.refer_key is not None
        view = {
            "key": file.refer_key,
            "url": download_url(self.rt.public_url, file.refer_key),
            "generation": file.refer_generation,
            "expires_at": file.refer_expires_at,
            "next_renewal_at": file.refer_next_at,
            "renewal_stopped": file.refer_stopped,
        }
        return _plain(view)


def _plain(view: dict[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(view, default=_iso))
    return plain


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
