"""/ops in headless Chromium (Debian's package, driven by Playwright): sign in with an operator
key, see the queues, the fleet, a failed job, the DLQ, and follow a job to its image.

Screenshots go to out/ops-screenshots/; with IMAGEGEN_UPDATE_SCREENSHOTS=1 they are also copied
to docs/img/ (the ones docs/ops.md shows). Needs /usr/bin/chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ROOT, RunningStack

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "out" / "ops-screenshots"
DOCS_IMG = ROOT / "docs" / "img"
REJECTED_PROMPT = "a man beheading a prisoner with blood everywhere"  # safety: violence
WAIT_MS = 60_000  # what the page is given to show a change (a condition, polled by Playwright)


def operator_key(stack: RunningStack) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "keys", "create", "--user"]
        + [f"e2e-ops-{uuid.uuid4().hex[:8]}", "--plan", "pro", "--role", "operator"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def submit(api: str, key: str, body: dict[str, Any]) -> str:
    r = httpx.post(
        f"{api}/v1/generations",
        json=body,
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def shot(page: Any, name: str, shots: Path, full: bool = True) -> Path:
    shots.mkdir(parents=True, exist_ok=True)
    path = shots / name
    page.screenshot(path=str(path), full_page=full)
    return path


def publish_screenshots(paths: list[Path]) -> None:
    """Copy to docs/img/ when IMAGEGEN_UPDATE_SCREENSHOTS=1."""
    if os.environ.get("IMAGEGEN_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, DOCS_IMG / p.name)


def sign_in(page: Any, api: str, key: str) -> Any:
    page.goto(f"{api}/ops")
    page.fill("#key", key)
    with page.expect_navigation() as nav:
        page.click("#signin button[type=submit]")
    return nav.value


def refused_user(chromium: Any, api: str, user_key: str, shots: Path) -> list[Path]:
    """A user key at sign-in: the 403 page, and no cookie."""
    context = chromium.new_context(viewport={"width": 1000, "height": 600})
    page = context.new_page()
    first = page.goto(f"{api}/ops")
    assert first is not None and first.status == 200
    page.locator("form#signin").wait_for()
    signin = shot(page, "ops-signin.png", shots)
    answer = sign_in(page, api, user_key)
    assert answer is not None and answer.status == 403
    assert page.locator("#forbidden").inner_text() == "403: operator keys only"
    assert "role 'user', not 'operator'" in page.content()
    assert context.cookies() == []
    forbidden = shot(page, "ops-403.png", shots)
    context.close()
    return [signin, forbidden]


def operator_flow(
    chromium: Any,
    api: str,
    op_key: str,
    user_key: str,
    model: str,
    shots: Path,
    worker: str = "worker-local-1",
    queue_burst: int = 0,
) -> list[Path]:
    """Sign in, check every panel, follow one job to its image, sign out; the screenshots."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    answer = sign_in(page, api, op_key)
    assert answer is not None and answer.status == 200
    (cookie,) = context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ops")
    page.wait_for_selector("#live.on", timeout=WAIT_MS)  # the first SSE snapshot is rendered
    # queues: the scheduler's counts per tier (a number, not "–": the scheduler answered)
    for tier in ("turbo", "fast", "relax"):
        queued = page.locator(f"#queues tr[data-tier={tier}] td").nth(1)
        assert queued.inner_text().isdigit(), queued.inner_text()
    assert page.locator("#queues .panel-error").is_hidden()
    # fleet: the stack's first worker is listed (its models are checked after the job below)
    page.locator(f"#fleet tr[data-worker='{worker}']").wait_for(timeout=WAIT_MS)
    # a job the safety service rejects shows in recent failures, with its reason
    failed = submit(api, user_key, {"prompt": REJECTED_PROMPT, "model": model, "steps": 2})
    failure = page.locator(f"#failures tr[data-job='{failed}']")
    failure.wait_for(timeout=WAIT_MS)
    assert "prompt_rejected" in failure.inner_text()
    # the DLQ panel: its size, or what keeps it from being read
    page.wait_for_function(
        "() => document.querySelector('#dlq .body').textContent.includes('records held')"
        " || !document.querySelector('#dlq .panel-error').hidden",
        timeout=WAIT_MS,
    )
    assert page.locator("#dlq .panel-error").is_hidden(), page.locator("#dlq").inner_text()
    for _ in range(queue_burst):  # something to wait in the queues panel's screenshot
        submit(api, user_key, {"prompt": "a blue circle", "model": model, "steps": 50})
    if queue_burst:
        page.wait_for_function(
            "() => [...document.querySelectorAll('#queues tr[data-tier] td:nth-child(4)')]"
            ".some((td) => Number(td.textContent) > 0)",
            timeout=WAIT_MS,
        )
    overview = shot(page, "ops-overview.png", shots)
    # a job followed live from the timeline panel until delivered, with its image
    job = submit(api, user_key, {"prompt": "a small red square", "model": model})
    page.fill("#job-id", job)
    page.click("#job-form button[type=submit]")
    page.wait_for_selector("#job-status.status-delivered", timeout=180_000)
    image = page.locator("#images img.delivered").first
    image.wait_for(timeout=WAIT_MS)
    page.wait_for_function(
        "() => { const i = document.querySelector('#images img.delivered');"
        " return i && i.complete && i.naturalWidth > 0; }",
        timeout=WAIT_MS,
    )
    events = page.locator("#events tr[data-event]").evaluate_all(
        "rows => rows.map((r) => r.dataset.event)"
    )
    for name in ("accepted", "scheduled", "started", "delivered"):
        assert name in events, events
    assert events[-1] == "delivered"
    timeline = shots / "ops-timeline.png"
    page.locator("#timeline").screenshot(path=str(timeline))
    # the fleet shows the worker that ran the job holding its model
    ran = httpx.get(
        f"{api}/v1/generations/{job}", headers={"Authorization": f"Bearer {user_key}"}, timeout=30
    ).json()["worker_id"]
    page.wait_for_function(
        "([w, m]) => [...document.querySelectorAll(`#fleet tr[data-worker='${w}'] .tag`)]"
        ".some((t) => t.textContent === m)",
        arg=[ran, model],
        timeout=WAIT_MS,
    )
    # sign out: the cookie goes, the page is the sign-in form again
    with page.expect_navigation():
        page.click("#signout button")
    page.locator("form#signin").wait_for()
    assert context.cookies() == []
    context.close()
    return [overview, timeline]


def test_a_user_key_gets_the_403_page(stack: RunningStack, chromium: Any) -> None:
    publish_screenshots(refused_user(chromium, stack.api, stack.key, SHOTS))


def test_the_operator_page_shows_every_panel_and_follows_a_job(
    stack: RunningStack, chromium: Any
) -> None:
    shots = operator_flow(
        chromium, stack.api, operator_key(stack), stack.key, model="tiny-random", shots=SHOTS
    )
    publish_screenshots(shots)
