"""The client against the fake portal: shapes, pages, retries, and what is never retried."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from clients.bitrix24 import (
    AmbiguousFailure,
    Bitrix24Client,
    Bitrix24Error,
    Command,
    Endpoint,
    LeakyBucket,
    OperatingBudget,
    RetryPolicy,
)
from tests.bitrix24.fake import FakeBitrix24, FakeLimits

FAST = RetryPolicy((0.01, 0.02, 0.04))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client_for(
    fake: FakeBitrix24,
    http: aiohttp.ClientSession,
    *,
    capacity: float | None = None,
    drain: float | None = None,
    operating_limit: float = 480.0,
    endpoint: Endpoint | None = None,
) -> Bitrix24Client:
    return Bitrix24Client(
        http,
        endpoint or Endpoint(fake.webhook_url),
        bucket=LeakyBucket(
            capacity or fake.limits.bucket_capacity, drain or fake.limits.bucket_drain
        ),
        budget=OperatingBudget(operating_limit, blocked_pause=0.2),
        retry=FAST,
    )


def add_contact(phone: str) -> Command:
    return Command("crm.contact.add", {"fields": {"NAME": phone, "PHONE": [{"VALUE": phone}]}})


async def test_batch_reads_results_and_errors_as_lists_or_maps(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    client = client_for(fake, http)
    # All succeed: PHP sends result as a list and result_error as [].
    created = await client.batch([add_contact(f"+7900000000{n}") for n in range(3)])
    assert [o.ok for o in created] == [True, True, True]
    # Some fail: result and result_error are maps keyed by command.
    outcomes = await client.batch(
        [
            Command("crm.contact.list", {"filter": {"PHONE": "+79000000001"}, "select": ["ID"]}),
            Command("crm.deal.update", {"id": 999_999, "fields": {"TITLE": "x"}}),
            Command("crm.contact.list", {"filter": {"PHONE": "+7900000000"}}),
        ]
    )
    assert outcomes[0].ok
    assert outcomes[0].result == [{"ID": str(created[1].result)}]
    assert outcomes[0].total == 1
    assert (outcomes[1].error, outcomes[1].description) == ("NOT_FOUND", "Not found")
    assert outcomes[2].result == []  # exact match only: a prefix finds nothing


async def test_a_batch_holds_at_most_fifty_commands(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    client = client_for(fake, http)
    with pytest.raises(ValueError, match="at most 50"):
        await client.batch([Command("crm.contact.list")] * 51)
    assert fake.requests["batch"] == 0


async def test_list_all_follows_pages_of_fifty(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    client = client_for(fake, http)
    for start in range(0, 120, 50):
        await client.batch(
            [add_contact(f"+7911{n:07d}") for n in range(start, min(start + 50, 120))]
        )
    rows = await client.list_all("crm.contact.list", {"select": ["ID"]})
    assert len(rows) == 120
    assert fake.requests["crm.contact.list"] == 3


async def test_query_limit_exceeded_is_retried(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    # Given a client that thinks the bucket is far bigger than it is
    fake.limits.bucket_capacity, fake.limits.bucket_drain = 2, 50.0
    client = client_for(fake, http, capacity=100, drain=1000)
    # When it sends more than the bucket holds, creates included
    for n in range(6):
        await client.batch([add_contact(f"+7922000000{n}")])
    # Then the portal refused some, and every create still happened exactly once
    assert any("QUERY_LIMIT_EXCEEDED" in v for v in fake.violations)
    assert len(fake.contacts) == 6


async def test_a_lost_answer_is_retried_for_reads_but_never_for_creates(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    client = client_for(fake, http)
    fake.lose_answer_to.append("crm.contact.add")
    with pytest.raises(AmbiguousFailure, match="502"):
        await client.batch([add_contact("+79330000001")])
    assert fake.requests["batch"] == 1  # not sent again...
    assert len(fake.contacts) == 1  # ... though it did run: the caller must look it up

    fake.lose_answer_to.append("crm.contact.list")
    found = await client.batch([Command("crm.contact.list", {"filter": {"PHONE": "+79330000001"}})])
    assert found[0].result
    assert fake.requests["batch"] == 3


async def test_a_read_gives_up_after_three_retries(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    client = client_for(fake, http)
    fake.fail_next.extend([502, 502, 502, 502])
    with pytest.raises(AmbiguousFailure):
        await client.call("crm.contact.list")
    assert fake.requests["crm.contact.list"] == 4


async def test_operation_time_limit_waits_for_the_reset(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    # Given a method the portal blocks after 0.05 s of operating time in a 0.5 s window,
    # and a client that does not know that limit
    fake.limits = FakeLimits(operating_limit=0.05, operating_window=0.5, latency=0.03)
    client = client_for(fake, http)
    # When it keeps calling the method
    for _ in range(4):
        await client.call("crm.deal.list")
    # Then it met the 429 and waited for the reset instead of failing
    assert any("OPERATION_TIME_LIMIT" in v for v in fake.violations)
    assert fake.commands["crm.deal.list"] == 4


async def test_the_operating_budget_keeps_a_method_from_its_429(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    # Given the same portal and a client that knows the limit
    fake.limits = FakeLimits(operating_limit=0.05, operating_window=0.5, latency=0.03)
    client = client_for(fake, http, operating_limit=0.05)
    for _ in range(4):
        await client.call("crm.deal.list")
    # Then the portal never had to refuse it
    assert fake.violations == []


async def test_the_client_keeps_within_the_bucket(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    fake.limits.bucket_capacity, fake.limits.bucket_drain = 5, 40.0
    client = client_for(fake, http, capacity=4)
    for n in range(20):
        await client.call("crm.contact.list", {"filter": {"PHONE": f"+7{n:010d}"}})
    assert fake.violations == []


async def test_oauth_token_and_bad_credentials(
    fake: FakeBitrix24, http: aiohttp.ClientSession
) -> None:
    client = client_for(fake, http, endpoint=Endpoint(fake.portal_url, fake.oauth_token))
    assert (await client.call("crm.contact.list"))["result"] == []
    wrong = client_for(fake, http, endpoint=Endpoint(fake.portal_url, "stolen"))
    with pytest.raises(Bitrix24Error, match="invalid_token"):
        await wrong.call("crm.contact.list")
    bad_hook = client_for(fake, http, endpoint=Endpoint(fake.webhook_url.replace("s3cret", "x")))
    with pytest.raises(Bitrix24Error, match="INVALID_CREDENTIALS"):
        await bad_hook.call("crm.contact.list")
