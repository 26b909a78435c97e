"""The console in a real browser: Debian's chromium driven by Playwright, against a real
server (HTTP API + console on 127.0.0.1) running tests/console_flows.py.

Chromium comes from apt (`apt-get install -y chromium`, as root) when it is missing; the test
is skipped when it can't be installed, except under CI=true, where that fails it. Playwright
never downloads a browser: it launches /usr/bin/chromium.

Screenshots go to the test's temporary folder; with STEPLINE_CONSOLE_SCREENSHOTS=1 they are
also written to docs/console/ (the ones the README shows).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from stepline.server.app import Server
from stepline.server.settings import Settings

pytestmark = pytest.mark.timeout(600)  # the first test may install chromium

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "console"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN = "console-admin-token"
VIEWER = "console-viewer-token"
BOUND_MS = 10_000  # every wait for the page is bounded by this
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
XSS_NOTE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def _apt_install() -> str:
    """Install Debian's chromium; '' when it is there, else why it could not be."""
    if CHROMIUM.exists():
        return ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "chromium is missing and apt-get can't install it here (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "chromium"]
    for attempt in range(2):
        if attempt:  # an old package list: refresh it once
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0 and CHROMIUM.exists():
            return ""
    return f"`apt-get install chromium` failed: {done.stderr.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium() -> Path:
    problem = _apt_install()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return CHROMIUM


@pytest.fixture(name="server")
async def server_fixture(tmp_path: Path) -> AsyncIterator[Server]:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{ADMIN}\n{VIEWER} read\n")
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        workflows=["tests.console_flows"],
        auth_token_file=tokens,
        trace_url_template="https://tracing.invalid/trace/{trace_id}",
    )
    started = await Server.start(settings)
    try:
        yield started
    finally:
        await started.stop(grace=1)


@dataclass
class Api:
    """The HTTP/JSON API as a test calls it."""

    base: str
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            payload = await response.json()
            if response.status != 200:
                raise ApiRefused(response.status, payload)
            return payload

    async def start(
        self, workflow: str, run_id: str, data: Any, resource: str = "", trace_id: str = ""
    ) -> str:
        body: dict[str, Any] = {"runId": run_id, "inputData": data, "resourceId": resource}
        if trace_id:
            body["tracingOptions"] = {"traceId": trace_id}
        answer = await self.call("POST", f"/v1/workflows/{workflow}/runs", body)
        started: str = answer["runId"]
        return started

    async def settle(self, run_id: str) -> str:
        """Wait (bounded) until the run is settled; its status."""
        answer = await self.call("GET", f"/v1/runs/{run_id}?wait_timeout=10s")
        status: str = answer["result"]["status"]
        return status


class ApiRefused(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


@pytest.fixture(name="api")
async def api_fixture(server: Server) -> AsyncIterator[Api]:
    assert server.http_url is not None
    async with aiohttp.ClientSession() as session:
        yield Api(server.http_url, session)


@pytest.fixture(name="browser")
async def browser_fixture(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Watched:
    """A page and what went wrong on it: script errors and refused (CSP) loads."""

    page: Page
    errors: list[str]


async def open_page(browser: Browser, scheme: str = "light") -> Watched:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800},
        color_scheme="dark" if scheme == "dark" else "light",
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(f"page error: {err}"))
    # Answers of 4xx are expected (the sign-in probe, a refused resume); anything else
    # logged as an error (a script error, a load the CSP refused) is a failure.
    expected = "Failed to load resource: the server responded with a status of 4"
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            if msg.type == "error" and not msg.text.startswith(expected)
            else None
        ),
    )
    return Watched(page, errors)


async def sign_in(page: Page, base: str, path: str, token: str) -> None:
    """Open `path` (a deep link), meet the sign-in form, enter the token."""
    await page.goto(base + path)
    await page.fill("#token", token)
    await page.click("form.signin button[type=submit]")
    await expect(page.locator("form.signin")).to_have_count(0, timeout=BOUND_MS)


def screenshot_paths(tmp_path: Path, name: str) -> list[Path]:
    paths = [tmp_path / f"{name}.png"]
    if os.environ.get("STEPLINE_CONSOLE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        paths.append(DOCS / f"{name}.png")
    return paths


async def shoot(page: Page, tmp_path: Path, name: str, selector: str | None = None) -> None:
    for path in screenshot_paths(tmp_path, name):
        if selector is None:
            await page.screenshot(path=str(path))
        else:
            await page.locator(selector).screenshot(path=str(path))


def node(page: Page, step: str) -> Any:
    return page.locator(f'svg.graph [data-step="{step}"]')


async def test_resume_from_the_generated_form_and_cancel_from_the_page(
    server: Server, api: Api, browser: Browser, tmp_path: Path
) -> None:
    order = {"item": "desk lamp", "quantity": 2, "note": "gift wrap"}
    run_id = await api.start(
        "reviewed_order", "order-1042", order, resource="customer-42", trace_id=TRACE_ID
    )
    held = await api.start("hold", "hold-7", {"item": "chair"}, resource="customer-7")
    await api.start("reviewed_order", "order-1043", {"item": "rug"}, resource="customer-9")
    await api.start("sync_catalog", "catalog-sync-3", {"skus": ["a-1", "b-2", "c-3"]})
    assert await api.settle(run_id) == "RUN_STATUS_SUSPENDED"
    assert await api.settle("catalog-sync-3") == "RUN_STATUS_FAILED"

    watched = await open_page(browser)
    page = watched.page
    # The deep link opens the run once the token is given; the suspended step says so.
    await sign_in(page, api.base, f"/runs/{run_id}", ADMIN)
    await expect(node(page, "review")).to_have_attribute("data-status", "suspended")
    await expect(node(page, "prepare")).to_have_attribute("data-status", "success")
    await expect(page.locator("#run-status")).to_have_text("suspended")
    await expect(page.locator(".conn")).to_have_text("● live", timeout=BOUND_MS)
    trace = page.locator(f'a:text-is("{TRACE_ID}")')
    await expect(trace).to_have_attribute("href", f"https://tracing.invalid/trace/{TRACE_ID}")
    await shoot(page, tmp_path, "run-page")
    await page.evaluate("window.__sameDocument = true")

    # An out-of-range score: the API's field violation appears under the score field.
    card = page.locator('.suspended-card[data-step="review"]')
    await card.locator('input[data-field="approved"]').check()
    await card.locator('input[data-field="reviewer"]').fill("Ann")
    await card.locator('input[data-field="score"]').fill("9")
    await card.locator("button[type=submit]").click()
    score_error = card.locator('.field:has(input[data-field="score"]) .field-error')
    await expect(score_error).to_contain_text("less than or equal to 5", timeout=BOUND_MS)
    await expect(card.locator('input[data-field="score"]')).to_have_attribute(
        "aria-invalid", "true"
    )
    await shoot(page, tmp_path, "resume-form", ".suspended-card")

    # A valid score: the graph turns to success live, in the same document (no reload).
    await card.locator('input[data-field="score"]').fill("4")
    await card.locator("button[type=submit]").click()
    await expect(node(page, "review")).to_have_attribute("data-status", "success")
    await expect(node(page, "publish")).to_have_attribute("data-status", "success")
    await expect(page.locator("#run-status")).to_have_text("success")
    await expect(page.locator(".suspended-card")).to_have_count(0)
    assert await page.evaluate("window.__sameDocument") is True
    output = page.locator('details[data-panel="output"] pre')
    await expect(output).to_contain_text('"published": true')

    # The runs list, then another run through its link: canceled from the page.
    await page.click('nav[aria-label="main"] >> text=Runs')
    row = page.locator(f'tr[data-run="{held}"]')
    await expect(row).to_have_attribute("data-status", "running", timeout=BOUND_MS)
    await expect(page.locator(f'tr[data-run="{run_id}"]')).to_have_attribute(
        "data-status", "success"
    )
    await shoot(page, tmp_path, "runs")
    await row.locator(f'a[href="/runs/{held}"]').click()
    await expect(node(page, "wait_for_cancel")).to_have_attribute("data-status", "running")
    await page.click("#action-cancel")
    await page.click("#action-cancel-confirm")
    await expect(page.locator("#run-status")).to_have_text("canceled", timeout=BOUND_MS)
    assert await api.settle(held) == "RUN_STATUS_CANCELED"
    assert watched.errors == []


async def test_a_read_only_token_sees_no_actions_and_cannot_write(
    server: Server, api: Api, browser: Browser
) -> None:
    suspended = await api.start("reviewed_order", "order-2001", {"item": "vase"})
    held = await api.start("hold", "hold-9", {"item": "table"})
    assert await api.settle(suspended) == "RUN_STATUS_SUSPENDED"

    watched = await open_page(browser)
    page = watched.page
    await sign_in(page, api.base, f"/runs/{suspended}", VIEWER)
    await expect(page.locator(".scope")).to_have_text("read-only")
    await expect(node(page, "review")).to_have_attribute("data-status", "suspended")
    await expect(page.locator(".readonly-note")).to_be_visible()
    # The graph works from the keyboard: a node takes focus and Enter selects it.
    await node(page, "prepare").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator(".step-card h2")).to_contain_text("prepare")
    # Everything is shown; nothing can be done.
    await expect(page.locator('.suspended-card[data-step="review"]')).to_be_visible()
    for hidden in ("form.schema-form", "form.time-travel", "#action-cancel", "#action-restart"):
        await expect(page.locator(hidden)).to_have_count(0)
    await page.goto(f"{api.base}/runs/{held}")
    await expect(node(page, "wait_for_cancel")).to_have_attribute("data-status", "running")
    await expect(page.locator("#action-cancel")).to_have_count(0)
    await page.goto(f"{api.base}/workflows/reviewed_order")
    await expect(page.locator("svg.graph")).to_be_visible()
    await expect(page.locator(".start-card")).to_have_count(0)

    # The API refuses the read-only token's writes, whatever the page shows.
    for path, body in (
        (f"/v1/runs/{held}:cancel", {}),
        (f"/v1/runs/{suspended}:resumeAsync", {"resumeData": {}}),
        ("/v1/workflows/hold/runs", {"inputData": {"item": "x"}}),
    ):
        with pytest.raises(ApiRefused) as refused:
            await api.call("POST", path, body, token=VIEWER)
        assert refused.value.status == 403
    status = await page.evaluate(
        """async ([path, token]) => (await fetch(path, {method: "POST",
             headers: {Authorization: `Bearer ${token}`, "Content-Type": "application/json"},
             body: "{}"})).status""",
        [f"/v1/runs/{held}:cancel", VIEWER],
    )
    assert status == 403
    answer = await api.call("GET", f"/v1/runs/{held}")
    assert answer["result"]["status"] == "RUN_STATUS_RUNNING"
    await api.call("POST", f"/v1/runs/{held}:cancel", {})
    assert watched.errors == []


async def test_payloads_render_as_text_and_nothing_executes(
    server: Server, api: Api, browser: Browser, tmp_path: Path
) -> None:
    order = {"item": "<script>window.__xss=3</script>", "note": XSS_NOTE}
    run_id = await api.start("reviewed_order", "order-xss", order, resource=XSS_NOTE)
    assert await api.settle(run_id) == "RUN_STATUS_SUSPENDED"

    watched = await open_page(browser, scheme="dark")
    page = watched.page
    await sign_in(page, api.base, f"/runs/{run_id}", ADMIN)
    await expect(node(page, "review")).to_have_attribute("data-status", "suspended")
    panel = page.locator('details[data-panel="input"] pre')
    await expect(panel).to_contain_text('<img src=x onerror=\\"window.__xss=1\\">')
    await expect(panel).to_contain_text("<script>window.__xss=3</script>")
    await shoot(page, tmp_path, "run-page-dark")

    await page.goto(f"{api.base}/runs")
    row = page.locator(f'tr[data-run="{run_id}"]')
    await expect(row).to_contain_text(XSS_NOTE)
    # The markup stayed text: no element was made from it and no handler or script ran.
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("img").count() == 0
    scripts = await page.evaluate("[...document.scripts].map((s) => s.src)")
    assert scripts == [f"{api.base}/console/console.js"]
    assert watched.errors == []
