"""Prometheus metrics on every role: what an operator's dashboard reads."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.bots import Producer
from tests.conftest import Harness, eventually
from workmesh.runtime import Role

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(harness: Harness, port: int) -> Samples:
    async with harness.http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), -1.0)


async def test_metrics_of_a_dispatcher_and_an_api_role(harness: Harness) -> None:
    api = await harness.start(Role.API)
    dispatcher = await harness.start(Role.DISPATCHER)
    bot = await harness.bot("m1", capacity=2, mode="done")
    await harness.wait_online("m1")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        for _ in range(5):
            await producer.submit()
    await eventually(lambda: len(bot.received) == 5, message="five delivered")
    port = dispatcher.settings.http.port

    async def counted() -> bool:
        samples = await scrape(harness, port)
        return value(samples, "workmesh_tasks", status="done") == 5

    await eventually(counted, message="done tasks counted")
    samples = await scrape(harness, port)
    assert value(samples, "workmesh_dispatcher_leader") == 1
    assert value(samples, "workmesh_dispatch_latency_seconds_count") == 5
    assert value(samples, "workmesh_assignments_total", tier="active") == 5
    assert value(samples, "workmesh_reports_total", kind="done", outcome="applied") == 5
    assert value(samples, "workmesh_worker_capacity", worker_id="m1", tier="active") == 2
    assert value(samples, "workmesh_worker_online", worker_id="m1") == 1
    assert value(samples, "workmesh_queue_depth", queue="workmesh.tasks.intake") == 0
    handled = [
        v
        for (name, labels), v in samples.items()
        if name == "faststream_received_processed_messages_total"
        and dict(labels).get("handler") == "workmesh.events.worker.heartbeat"
    ]
    assert handled
    assert sum(handled) > 0  # the heartbeat handler, through FastStream's middleware
    # The api role counts its HTTP requests
    await harness.api("GET", "/api/v1/stats")
    api_samples = await scrape(harness, api.settings.http.port)
    assert (
        value(api_samples, "workmesh_http_requests_total", route="/api/v1/stats", status="200") >= 1
    )
    async with harness.http.get(f"http://127.0.0.1:{port}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {
            "ok": True,
            "database": True,
            "rabbitmq": True,
            "dispatcher": True,
        }
    # The dispatcher role serves no API
    async with harness.http.get(f"http://127.0.0.1:{port}/api/v1/stats") as response:
        assert response.status == 404
    assert isinstance(harness.http, aiohttp.ClientSession)
