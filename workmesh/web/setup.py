"""Wiring the web part into the api role's HTTP application and broker."""

from __future__ import annotations

from aiohttp import web

from workmesh.capabilities import MeshContext
from workmesh.web import overview, pages
from workmesh.web.deadletters import DEAD_LETTERS, DeadLetterLog


def attach_web(mesh: MeshContext, app: web.Application) -> None:
    """Serve the pages and the overview; keep the recent dead letters this process sees."""
    log = DeadLetterLog()
    log.subscribe(mesh.broker)
    app[DEAD_LETTERS] = log
    app.add_routes(pages.routes)
    app.add_routes(overview.routes)
