"""The dashboard in headless Chromium: it renders under its CSP; its screenshot goes to docs/."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from plugin.storage.schema import suppressions
from tests.admin.test_admin import NOW, PASSWORD, dashboard_app, seed
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from tests.support.paths import ROOT

SCREENSHOT = ROOT / "docs" / "screenshots" / "admin-feedback.png"
# (kind, cards per day, share accepted, share overridden, override reasons)
TRAFFIC = [
    ("notify-municipal-doctor", 6, 0.3, 0.5, ["already-notified", "not-relevant-for-contact"]),
    ("isolation-inpatient", 9, 0.5, 0.3, ["measures-in-place", "not-relevant-for-contact"]),
    ("respirator", 4, 0.4, 0.4, ["measures-in-place"]),
    ("staff-in-vulnerable-groups", 3, 0.2, 0.6, ["not-relevant-for-contact"]),
]

# (kind, hours left); the last one has expired and must not be counted
ACTIVE_SUPPRESSIONS = [
    ("notify-municipal-doctor", 700),
    ("notify-municipal-doctor", 20),
    ("isolation-inpatient", 10),
    ("respirator", 5),
    ("respirator", -1),
]


def synthetic_traffic(today: datetime) -> list[tuple[Any, str, str | None, str | None]]:
    """Thirty days of made-up card outcomes (no patients involved), the same every run."""
    rng = random.Random(20261125)
    rows: list[tuple[Any, str, str | None, str | None]] = []
    for back in range(29, -1, -1):
        day = (today - timedelta(days=back)).date()
        for kind, per_day, accepted, overridden, reasons in TRAFFIC:
            for _ in range(max(0, per_day + rng.randint(-3, 3))):
                roll = rng.random()
                if roll < accepted:
                    rows.append((day, kind, "accepted", None))
                elif roll < accepted + overridden:
                    rows.append((day, kind, "overridden", rng.choice(reasons)))
                else:
                    rows.append((day, kind, None, None))
    return rows


@pytest.fixture
def server(make_app: Any) -> Iterator[str]:
    # A fixed clock: the screenshot is the same on every run.
    app = dashboard_app(make_app)
    seed(app, synthetic_traffic(NOW))
    with app.extensions["cds_store"].engine.begin() as conn:
        conn.execute(
            suppressions.insert(),
            [
                {
                    "patient_hash": f"{number:064x}",
                    "encounter_hash": "",
                    "kind": kind,
                    "status": "suspected",
                    "reason": "measures-in-place",
                    "created_at": NOW,
                    "expires_at": NOW + timedelta(hours=hours),
                }
                for number, (kind, hours) in enumerate(ACTIVE_SUPPRESSIONS)
            ],
        )
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.browser
def test_dashboard_in_chromium(server: str, tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            http_credentials={"username": "admin", "password": PASSWORD},
            viewport={"width": 1100, "height": 900},
            device_scale_factor=1,
        )
        try:
            page = context.new_page()
            # A CSP violation or a failed load shows up as a console error.
            page.on(
                "console", lambda msg: problems.append(msg.text) if msg.type == "error" else None
            )
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("requestfailed", lambda req: problems.append(f"failed: {req.url}"))
            response = page.goto(f"{server}/admin/feedback", wait_until="load")
            assert response is not None and response.status == 200

            assert page.locator("#kinds tbody tr").count() == len(TRAFFIC)
            assert page.locator("svg.chart rect.bar.shown").count() > 28
            assert page.locator("svg.chart rect.bar.overridden").count() > 28
            # The stylesheet loaded under the CSP: bars have the dashboard's colours.
            fill = page.locator("rect.bar.overridden").first.evaluate(
                "el => getComputedStyle(el).fill"
            )
            assert fill == "rgb(210, 105, 30)"
            assert "Varsling til kommunelegen" in page.locator("#kinds").inner_text()
            suppressed = {
                kind: page.locator(f'#kinds tr[data-kind="{kind}"] td').last.inner_text()
                for kind in ("notify-municipal-doctor", "respirator", "isolation-inpatient")
            }
            assert suppressed == {
                "notify-municipal-doctor": "2",
                "respirator": "1",
                "isolation-inpatient": "1",
            }

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            page.select_option("#days", "7")
            page.click("button[type=submit]")
            page.wait_for_load_state("load")
            assert page.url.endswith("/admin/feedback?days=7")
            assert page.locator("svg.chart").first.locator("rect.bar.shown").count() == 7

            assert problems == []

            # A download ends its navigation as an aborted request: no longer a problem here.
            with page.expect_download() as download_info:
                page.click("a.export")
            csv_text = Path(download_info.value.path()).read_text(encoding="utf-8")
            assert csv_text.startswith("date,card_kind,event,override_reason,count")
        finally:
            context.close()
    assert SCREENSHOT.stat().st_size > 10_000
