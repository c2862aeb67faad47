"""The two pages and their files: plain HTML, CSS and JavaScript, no build step."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from workmesh.api.common import SETTINGS, Handler, json_response

STATIC = Path(__file__).parent / "static"
routes = web.RouteTableDef()

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# Everything the pages load comes from here; the scripts build the page with textContent only.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
FILES = {
    "/app/": "app.html",
    "/app/app.js": "app.js",
    "/ops/": "ops.html",
    "/ops/ops.js": "ops.js",
    "/web/common.js": "common.js",
    "/web/style.css": "style.css",
}


def _file(name: str) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        path = STATIC / name
        return web.Response(
            body=path.read_bytes(),
            content_type=TYPES[path.suffix],
            charset="utf-8",
            headers=HEADERS,
        )

    return serve


def _redirect(to: str) -> Handler:
    async def redirect(request: web.Request) -> web.Response:
        # Returned, not raised: the API's error middleware turns raised HTTP errors into JSON.
        return web.Response(status=308, headers={"Location": to})

    return redirect


for _path, _name in FILES.items():
    routes.get(_path)(_file(_name))
routes.get("/app")(_redirect("/app/"))
routes.get("/ops")(_redirect("/ops/"))


@routes.get("/app/settings.json")
async def page_settings(request: web.Request) -> web.Response:
    """What the worker page needs to know of the mesh: how often to send a heartbeat."""
    timeout = request.app[SETTINGS].dispatch.heartbeat_timeout
    return json_response({"heartbeat_every": timeout / 3})
