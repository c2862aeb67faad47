"""The pages' files as served by the api role, without a browser."""

from __future__ import annotations

import pytest

from tests.conftest import Harness

pytestmark = pytest.mark.e2e


async def test_the_pages_and_their_files_are_served(harness: Harness) -> None:
    await harness.start("api", heartbeat_timeout=12.0)
    for path, kind, marker in [
        ("/app/", "text/html", '<script src="/app/app.js" defer></script>'),
        ("/ops/", "text/html", '<script src="/ops/ops.js" defer></script>'),
        ("/app/app.js", "text/javascript", "window.workmeshWorker"),
        ("/ops/ops.js", "text/javascript", "/api/v1/ops/overview"),
        ("/web/common.js", "text/javascript", "const wm ="),
        ("/web/style.css", "text/css", ":root"),
    ]:
        async with harness.http.get(harness.base + path) as response:
            assert response.status == 200, path
            assert response.content_type == kind, path
            assert marker in await response.text(), path
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    for bare in ("/app", "/ops"):
        async with harness.http.get(harness.base + bare, allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == bare + "/"
    status, body = await harness.api("GET", "/app/settings.json", token=None)
    assert (status, body) == (200, {"heartbeat_every": 4.0})
    status, body = await harness.api("GET", "/app/nothing.js", token=None)
    assert status == 404


async def test_the_dispatcher_role_serves_no_pages(harness: Harness) -> None:
    await harness.start("dispatcher")
    for path in ("/app/", "/ops/", "/api/v1/ops/overview"):
        status, _ = await harness.api("GET", path)
        assert status == 404, path
