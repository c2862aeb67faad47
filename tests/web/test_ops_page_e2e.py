"""The operator page, in headless Chromium, against the real mesh."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.conftest import ADMIN_TOKEN, Harness

pytestmark = pytest.mark.e2e


async def submit(harness: Harness, kind: str, priority: int = 0) -> str:
    status, body = await harness.api(
        "POST", "/api/v1/tasks", json={"kind": kind, "priority": priority}
    )
    assert status == 201, body
    return str(body["id"])


async def sign_in(page: Page, harness: Harness, token: str) -> None:
    await page.goto(harness.base + "/ops/")
    await page.fill("#token", token)
    await page.click("#signin-button")


async def test_only_an_admin_token_opens_the_operator_page(harness: Harness, page: Page) -> None:
    await harness.start("api")
    worker = await harness.add_worker("clerk")
    await sign_in(page, harness, "wm_not-a-token")
    await expect(page.locator("#signin-error")).to_have_text(
        "Sign-in refused: unknown token (HTTP 401)"
    )
    await sign_in(page, harness, worker)
    await expect(page.locator("#signin-error")).to_have_text(
        "Sign-in refused: this needs a token of role admin; yours is worker (HTTP 403)"
    )
    await expect(page.locator("#main")).to_be_hidden()
    assert await page.evaluate("() => sessionStorage.length") == 0

    # No dispatcher runs: what is submitted waits, stored and in the intake queue.
    for priority in (7, 7, 3):
        await submit(harness, "waiting", priority)
    await sign_in(page, harness, ADMIN_TOKEN)
    await expect(page.locator("#signin-section")).to_be_hidden()
    await expect(page.locator('#by-priority tr[data-priority="7"] td.num')).to_have_text("2")
    await expect(page.locator('#by-priority tr[data-priority="3"] td.num')).to_have_text("1")
    await expect(page.locator('#by-priority tr[data-priority="9"] td.num')).to_have_text("0")
    await expect(page.locator("#intake")).to_have_text("3")
    await expect(page.locator('#by-status tr[data-status="queued"] td')).to_have_text("3")
    await expect(page.locator('#workers tr[data-worker-id="clerk"] td.offline')).to_have_text(
        "offline"
    )


async def test_the_operator_page_shows_workers_and_counts_as_they_change(
    harness: Harness, page: Page
) -> None:
    await harness.start(max_attempts=1)
    await harness.add_worker("spare", capacity=3, tier="reserve")
    doer_bot = await harness.bot("doer", capacity=2)
    for n in range(2):
        await harness.wait_task(await submit(harness, f"job-{n}"), "done", status="done")

    await sign_in(page, harness, ADMIN_TOKEN)
    doer = page.locator('#workers tr[data-worker-id="doer"]')
    await expect(doer.locator("td.online")).to_have_text("online")
    await expect(doer.locator("td.load")).to_have_text("0 / 2")
    spare = page.locator('#workers tr[data-worker-id="spare"]')
    await expect(spare).to_contain_text("reserve")
    await expect(spare.locator("td.offline")).to_have_text("offline")
    await expect(spare.locator("td.load")).to_have_text("0 / 3")
    await expect(page.locator('#by-status tr[data-status="done"] td')).to_have_text("2")
    await expect(page.locator('#throughput tr[data-window="last_minute"] td.done')).to_have_text(
        "2"
    )
    await expect(page.locator("#intake")).to_have_text("0")

    # The page refreshes itself: a task that dies shows in the counts and the dead letters.
    doer_bot.mode = "fail"
    doomed = await submit(harness, "doomed", priority=6)
    await harness.wait_task(doomed, "dead after its one attempt", status="dead")
    await expect(page.locator('#by-status tr[data-status="dead"] td')).to_have_text("1")
    await expect(page.locator('#throughput tr[data-window="last_minute"] td.dead')).to_have_text(
        "1"
    )
    letter = page.locator("#dead-letters tr", has_text=doomed)
    await expect(letter.locator("td.reason")).to_have_text("attempts exhausted (1 of 1): boom")
    await expect(page.locator("#error")).to_be_hidden()
