"""A headless Chromium page per test: Debian's own browser, driven by Playwright.

Playwright never downloads a browser here; scripts/test.sh installs Debian's ``chromium``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()  # read once, outside the event loop
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Chromium logs every HTTP error answer; the pages handle those (the tests check how).
ANSWERED = "Failed to load resource: the server responded with a status of"


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A fresh browser page; the test fails if the page's scripts throw or break a rule."""
    if not HAVE_CHROMIUM:
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)",
            pytrace=False,
        )
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(10_000)
            page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console {message.type}: {message.text}")
                    if message.type == "error" and not message.text.startswith(ANSWERED)
                    else None
                ),
            )
            yield page
        finally:
            await browser.close()
    assert not problems, problems
