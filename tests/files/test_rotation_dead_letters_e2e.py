"""Rotation messages that can never work are dead-lettered with a reason; duplicates and
stale messages change nothing."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import Harness, eventually
from tests.files.helpers import EventTap, KiB, start, upload


async def dead_letters(amqp_url: str, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(amqp_url)
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with connection:
        queue = await (await connection.channel()).get_queue("workmesh.dead")

        async def enough() -> bool:
            message = await queue.get(fail=False, no_ack=True)
            if message is not None:
                got.append(message)
            return len(got) >= count

        await eventually(enough, message=f"{count} dead letters")
    return got


@pytest.mark.e2e
async def test_bad_rotation_messages_are_dead_lettered_with_a_reason(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path)
    connection = await aio_pika.connect(harness.amqp_url)
    async with connection:
        channel = await connection.channel()
        for body in (
            b"{not json",
            json.dumps(
                {"file_id": "f", "generation": 0, "due_at": "2026-01-01T00:00:00Z"}
            ).encode(),
            json.dumps(
                {"file_id": "missing", "generation": 1, "due_at": datetime.now(UTC).isoformat()}
            ).encode(),
        ):
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="workmesh.files.rotate",
            )
    dead = await dead_letters(harness.amqp_url, 3)
    reasons = sorted(str((m.headers or {})["x-workmesh-reason"]) for m in dead)
    assert reasons[0].startswith("invalid rotation message")
    assert "generation" in reasons[1]
    assert reasons[2] == "no file 'missing'"


@pytest.mark.e2e
async def test_a_duplicated_or_stale_rotation_message_renews_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    await start(harness, tmp_path, refer_interval=30)
    view = await upload(harness, os.urandom(KiB))
    file_id = view["id"]
    async with EventTap(harness.amqp_url) as tap:
        connection = await aio_pika.connect(harness.amqp_url)
        async with connection:
            channel = await connection.channel()
            body = {"file_id": file_id, "generation": 1, "due_at": datetime.now(UTC).isoformat()}
            stale = {**body, "generation": 7}
            sentinel = {**body, "file_id": "sentinel"}
            # The due message, the same again (a duplicate), one naming another generation, and
            # a sentinel: messages are settled in order, so its dead letter means all were.
            for message in (body, body, stale, sentinel):
                await channel.default_exchange.publish(
                    aio_pika.Message(json.dumps(message).encode()),
                    routing_key="workmesh.files.rotate",
                )
        await dead_letters(harness.amqp_url, 1)
        await tap.wait_for(file_id, "refer.renewed")
        assert len(tap.of(file_id, "refer.renewed")) == 1
    _, after = await harness.api("GET", f"/api/v1/files/{file_id}")
    assert after["refer"]["generation"] == 2
