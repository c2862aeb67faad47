"""The seed's check with real processes: ``workmesh orders pair`` runs A and B (two
processes, two SQLite databases, two vhosts); an order created and changed in B appears in
A, and the other way round."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import RABBIT_HOST, eventually, free_port

ORDER: dict[str, Any] = {"customer": "Pair", "status": "new", "items": [], "note": ""}


def test_pair_command_runs_two_syncing_instances(tmp_path: Path) -> None:
    vhosts = [f"wm-test-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    env = {**os.environ, "WORKMESH_AMQP_URL": f"amqp://guest:guest@{RABBIT_HOST}:5672/"}
    command = [
        sys.executable, "-m", "workmesh.cli", "orders", "pair", "--dir", str(tmp_path),
        "--vhost-a", vhosts[0], "--vhost-b", vhosts[1],
        "--port-a", str(free_port()), "--port-b", str(free_port()),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, cwd=tmp_path)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, "the pair command printed nothing"
        asyncio.run(_check(json.loads(line)))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        for vhost in vhosts:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


async def _check(report: dict[str, Any]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def call(side: str, method: str, path: str, **kw: Any) -> Any:
            headers = {"Authorization": f"Bearer {report[side]['admin_token']}"}
            url = report[side]["url"] + path
            async with http.request(method, url, headers=headers, **kw) as response:
                assert response.status < 300, await response.text()
                return await response.json()

        async def note_in(side: str, order_id: str, note: str) -> bool:
            headers = {"Authorization": f"Bearer {report[side]['admin_token']}"}
            url = f"{report[side]['url']}/api/v1/orders/{order_id}"
            async with http.get(url, headers=headers) as response:
                if response.status != 200:
                    return False
                body = await response.json()
                return bool(body["body"]["note"] == note and body["sync_state"] == "OK")

        for here, there in (("B", "A"), ("A", "B")):
            created = await call(here, "POST", "/api/v1/orders", json=ORDER)
            order_id = created["id"]
            await eventually(lambda: note_in(there, order_id, ""), timeout=20,  # noqa: B023
                             message=f"created in {here}, seen in {there}")  # fmt: skip
            await eventually(lambda: note_in(here, order_id, ""), timeout=20,  # noqa: B023
                             message=f"acknowledged in {here}")  # fmt: skip
            changed = {**ORDER, "note": f"changed in {here}"}
            await call(here, "PUT", f"/api/v1/orders/{order_id}", json=changed)
            await eventually(
                lambda: note_in(there, order_id, f"changed in {here}"),  # noqa: B023
                timeout=20, message=f"changed in {here}, seen in {there}",
            )  # fmt: skip
