"""The page for people who take tasks, in headless Chromium, against the real mesh."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.conftest import ADMIN_TOKEN, Harness, eventually

pytestmark = pytest.mark.e2e


async def submit(harness: Harness, token: str, kind: str, **extra: Any) -> str:
    status, body = await harness.api(
        "POST", "/api/v1/tasks", token=token, json={"kind": kind, **extra}
    )
    assert status == 201, body
    return str(body["id"])


async def sign_in(page: Page, harness: Harness, token: str) -> None:
    await page.goto(harness.base + "/app/")
    await page.fill("#token", token)
    await page.click("#signin-button")


async def signed_in(page: Page, harness: Harness, token: str, worker_id: str) -> None:
    await sign_in(page, harness, token)
    await expect(page.locator("#worker-id")).to_have_text(worker_id)
    await expect(page.locator("#signin-section")).to_be_hidden()


def row(page: Page, task_id: str) -> Any:
    return page.locator(f'#tasks tr[data-task-id="{task_id}"]')


async def server_refusal(harness: Harness, token: str, task_id: str, status: str) -> str:
    """What the HTTP API answers to the same change: the page must show the same words."""
    code, body = await harness.api(
        "POST", f"/api/v1/worker/tasks/{task_id}/status", token=token, json={"status": status}
    )
    assert code >= 400, body
    return f"{body['error']} (HTTP {code})"


async def test_a_person_starts_and_finishes_tasks(harness: Harness, page: Page) -> None:
    await harness.start()
    token = await harness.add_worker("clerk", capacity=1)
    producer = await harness.producer_token()
    await signed_in(page, harness, token, "clerk")
    await harness.wait_online("clerk")  # the page's heartbeats
    await expect(page.locator("#queue-waiting")).to_have_text("0")

    first = await submit(harness, producer, "invoice", priority=4, payload={"number": 17})
    await expect(row(page, first).locator("td.status")).to_have_text("assigned")
    await expect(row(page, first)).to_contain_text("invoice")
    await expect(row(page, first)).to_contain_text('"number": 17')
    await row(page, first).locator("button.start").click()
    await expect(row(page, first).locator("td.status")).to_have_text("in_progress")
    await harness.wait_task(first, "started from the page", status="in_progress")

    # The clerk is full: the next task waits until the first is finished.
    second = await submit(harness, producer, "invoice", payload={"number": 18})
    await harness.wait_task(second, "waiting for room", status="queued")

    await row(page, first).locator("input.result").fill('{"paid": true}')
    await row(page, first).locator("button.finish").click()
    await expect(row(page, first)).to_have_count(0)
    await harness.wait_task(first, "done from the page", status="done", result={"paid": True})
    # Room again: the waiting task comes to the clerk and leaves the queue.
    await expect(row(page, second).locator("td.status")).to_have_text("assigned")
    await row(page, second).locator("input.result").fill("paid in cash")
    await row(page, second).locator("button.finish").click()
    await harness.wait_task(
        second, "finished without starting", status="done", result="paid in cash"
    )
    await expect(page.locator("#log")).to_contain_text(f"Task {second} is now done.")

    # A change the lifecycle forbids: the server's own words are shown.
    expected = await server_refusal(harness, token, first, "in_progress")
    await page.evaluate("([id]) => workmeshWorker.setStatus(id, 'in_progress')", [first])
    await expect(page.locator("#error")).to_have_text(
        f"The server refused: Task {first}: {expected}"
    )


async def test_the_page_shows_the_queue_as_it_changes(harness: Harness, page: Page) -> None:
    await harness.start("api")  # no dispatcher yet: submitted tasks wait in the intake queue
    token = await harness.add_worker("clerk", capacity=2)
    producer = await harness.producer_token()
    await signed_in(page, harness, token, "clerk")
    await expect(page.locator("#queue-waiting")).to_have_text("0")
    ids = [await submit(harness, producer, "form", priority=p) for p in (1, 8)]
    await expect(page.locator("#queue-waiting")).to_have_text("2")
    await harness.start("dispatcher")  # the clerk has room for both
    for task_id in ids:
        await expect(row(page, task_id).locator("td.status")).to_have_text("assigned")
    await expect(page.locator("#queue-waiting")).to_have_text("0")
    # Most urgent first.
    assert await page.locator("#tasks tr").evaluate_all(
        "rows => rows.map(r => r.dataset.taskId)"
    ) == [ids[1], ids[0]]


async def test_a_rejected_task_goes_to_someone_else(harness: Harness, page: Page) -> None:
    await harness.start()
    token = await harness.add_worker("clerk")
    producer = await harness.producer_token()
    await signed_in(page, harness, token, "clerk")
    await harness.wait_online("clerk")
    task_id = await submit(harness, producer, "letter")
    await expect(row(page, task_id)).to_have_count(1)

    await harness.bot("other")  # has room, so the rejecting clerk is passed over
    await harness.wait_online("other")
    await row(page, task_id).locator("button.reject").click()
    await expect(row(page, task_id)).to_have_count(0)
    await harness.wait_task(task_id, "done by the other worker", status="done", worker_id="other")
    await expect(page.locator("#log")).to_contain_text(f"Task {task_id} is now queued.")


async def test_a_task_that_is_not_mine_is_refused_with_the_reason(
    harness: Harness, page: Page
) -> None:
    await harness.start()
    token = await harness.add_worker("clerk")
    holder = await harness.bot("holder", mode="hold")
    producer = await harness.producer_token()
    theirs = await submit(harness, producer, "theirs")
    await harness.wait_task(theirs, "held by the other worker", status="in_progress")
    assert theirs in holder.held
    await signed_in(page, harness, token, "clerk")

    expected = await server_refusal(harness, token, theirs, "done")
    assert "is not assigned to worker 'clerk'" in expected
    await page.evaluate("([id]) => workmeshWorker.setStatus(id, 'done')", [theirs])
    await expect(page.locator("#error")).to_have_text(
        f"The server refused: Task {theirs}: {expected}"
    )
    await harness.wait_task(theirs, "still the holder's", status="in_progress", worker_id="holder")

    expected = await server_refusal(harness, token, "no-such-task", "rejected")
    await page.evaluate("() => workmeshWorker.setStatus('no-such-task', 'rejected')")
    await expect(page.locator("#error")).to_have_text(
        f"The server refused: Task no-such-task: {expected}"
    )


async def test_a_wrong_token_stays_on_the_sign_in_form(harness: Harness, page: Page) -> None:
    await harness.start("api")
    await harness.add_worker("clerk")
    for wrong in ["wm_not-a-token", ADMIN_TOKEN]:  # unknown; known, but not a worker's
        await sign_in(page, harness, wrong)
        await expect(page.locator("#signin-error")).to_have_text(
            "Sign-in refused: unknown token, or not a worker's token"
        )
        await expect(page.locator("#signin-section")).to_be_visible()
        await expect(page.locator("#main")).to_be_hidden()
        assert await page.evaluate("() => sessionStorage.length") == 0


async def test_the_token_lasts_the_tab_and_sign_out_forgets_it(
    harness: Harness, page: Page
) -> None:
    await harness.start()
    token = await harness.add_worker("clerk")
    producer = await harness.producer_token()
    await signed_in(page, harness, token, "clerk")
    task_id = await submit(harness, producer, "note")
    await row(page, task_id).locator("button.start").click()
    await harness.wait_task(task_id, "started", status="in_progress")

    # A reload signs in again from session storage, and the started task is still listed
    # (read from the database: its assignment was confirmed when it was started).
    await page.reload()
    await expect(page.locator("#worker-id")).to_have_text("clerk")
    await expect(row(page, task_id).locator("td.status")).to_have_text("in_progress")

    await page.click("#signout")
    await expect(page.locator("#signin-section")).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0
    await page.reload()
    await expect(page.locator("#signin-section")).to_be_visible()

    async def offline() -> bool:
        _, body = await harness.api("GET", "/api/v1/workers/clerk")
        return body["online"] is False

    await eventually(offline, message="the clerk offline once the page stopped its heartbeats")
