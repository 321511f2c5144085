"""End to end in headless Chromium: an EHR launches the SMART page, the browser follows.

The parts are real: the app on a loopback HTTP server, the test EHR
(tests/smart_auth_server.py: Authlib authorisation server and FHIR gateway)
in front of the Medplum FHIR test server holding the synthetic patients, and
Debian's Chromium driven by Playwright (``executable_path``, no download).
The page must show the cards the CDS service itself returns for the same
patient and encounter. Screenshots at 400 px and full width go to
docs/screenshots/.

Skipped without /usr/bin/chromium or Playwright, except when ``CI=true``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from werkzeug.serving import make_server

from plugin import create_app
from tests.support import fhirserver
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from tests.support.fhirserver import FhirTestServer
from tests.support.paths import ROOT
from tests.support.smart_auth_server import IssuedToken, QuietHandler, SmartEhr

fhir_server = fhirserver.fhir_server  # pytest fixture, used by name

pytestmark = [pytest.mark.browser, pytest.mark.fhir_server]


PATIENTS = ROOT / "fhir_profiles" / "patients"
SCREENSHOTS = ROOT / "docs" / "screenshots"
SUSPECTED_OUTPATIENT = "mk-suspected-outpatient"
CONFIRMED_INPATIENT = "mk-confirmed-inpatient"


@dataclass
class Stack:
    app: Flask
    base_url: str
    ehr: SmartEhr
    encounters: dict[str, str]


def _load_patient(fhir: FhirTestServer, patient: str) -> str:
    """Load a synthetic patient's Bundle; returns the id of its encounter."""
    bundle = json.loads((PATIENTS / f"{patient}.json").read_text())
    status, body = fhir.request("POST", "/", bundle)
    assert status == 200, body
    (encounter,) = [
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
    ]
    return str(encounter)


@pytest.fixture(scope="module")
def stack(fhir_server: FhirTestServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_browser()
    fhir_server.reset()
    encounters = {
        p: _load_patient(fhir_server, p) for p in (SUSPECTED_OUTPATIENT, CONFIRMED_INPATIENT)
    }
    ehr = SmartEhr(fhir_server.base_url).start()
    app = create_app(
        {
            "CDS_DATA_DIR": str(tmp_path_factory.mktemp("smart-e2e")),
            "CDS_ALLOWED_FHIR_SERVERS": ehr.fhir_base,
            "CDS_ALLOW_UNSIGNED": "1",
            "CDS_LANGUAGE": "nb",
            # The page shows every card (nothing folded under a cap): compare it with uncut answers.
            "CDS_MAX_CARDS": "20",
        }
    )
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    ehr.register_client("mkopper-cds", f"{base_url}/smart/callback")
    try:
        yield Stack(app, base_url, ehr, encounters)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        ehr.stop()
        app.extensions["cds_store"].engine.dispose()


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def cds_summaries(stack: Stack, patient: str, encounter: str) -> list[str]:
    """What the CDS service answers for this chart (patient-view, then encounter-start)."""
    token = f"cds-{uuid.uuid4()}"
    stack.ehr.tokens[token] = IssuedToken(
        patient=patient, encounter=encounter, scope="patient/*.read", expires_at=time.time() + 600
    )
    client = stack.app.test_client()
    summaries: list[str] = []
    context = {"userId": "Practitioner/test", "patientId": patient, "encounterId": encounter}
    for service_id, hook in (
        ("mkopper-patient-view", "patient-view"),
        ("mkopper-encounter-start", "encounter-start"),
    ):
        response = client.post(
            f"/cds-services/{service_id}",
            json={
                "hook": hook,
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": stack.ehr.fhir_base,
                "fhirAuthorization": {
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": 600,
                    "scope": "patient/*.read",
                    "subject": "mkopper-cds",
                },
                "context": context,
            },
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        for card in response.get_json()["cards"]:
            if card["summary"] not in summaries:
                summaries.append(card["summary"])
    return summaries


def launch_in_browser(browser: Any, stack: Stack, patient: str, width: int, **launch: Any) -> Any:
    """The EHR opens the app for ``patient``; returns the page once the redirects settle."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    launch_id = stack.ehr.new_launch(patient, stack.encounters[patient], **launch)
    query = urlencode({"iss": stack.ehr.fhir_base, "launch": launch_id})
    page.goto(f"{stack.base_url}/smart/launch?{query}")
    page.wait_for_load_state("load")
    return page


RANK = {"critical": 0, "warning": 1, "info": 2}


def shown(page: Any) -> tuple[list[str], list[str]]:
    """Findings and summaries on the page; checks the cards run from most to least urgent."""
    cards = page.locator("li.card")
    findings = [cards.nth(i).get_attribute("data-finding") for i in range(cards.count())]
    ranks = [RANK[cards.nth(i).get_attribute("data-indicator")] for i in range(cards.count())]
    assert ranks == sorted(ranks)
    summaries = [s.strip() for s in page.locator("li.card h2.summary").all_inner_texts()]
    return findings, summaries


def test_suspected_outpatient(browser: Any, stack: Stack) -> None:
    page = launch_in_browser(browser, stack, SUSPECTED_OUTPATIENT, 400)
    try:
        assert page.url == f"{stack.base_url}/smart/"
        findings, summaries = shown(page)
        encounter = stack.encounters[SUSPECTED_OUTPATIENT]
        expected = cds_summaries(stack, SUSPECTED_OUTPATIENT, encounter)
        assert sorted(summaries) == sorted(expected)
        assert len(summaries) == len(expected)
        # Outpatient advice (guideline 5.1), never the inpatient isolation card.
        assert "droplet-precautions-outpatient" in findings
        assert "isolation-inpatient" not in findings
        card = page.locator('li.card[data-finding="droplet-precautions-outpatient"]')
        items = [t.strip() for t in card.locator(".checklist label").all_inner_texts()]
        assert "Kirurgisk munnbind" in items
        assert "Hansker" in items
        assert page.locator(".nothing").count() == 0
        assert "sist endret 21.03.25" in page.locator("footer .version").inner_text()
    finally:
        page.close()


def test_confirmed_inpatient_and_screenshots(browser: Any, stack: Stack) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = launch_in_browser(browser, stack, CONFIRMED_INPATIENT, 400)
    try:
        assert page.url == f"{stack.base_url}/smart/"
        findings, summaries = shown(page)
        encounter = stack.encounters[CONFIRMED_INPATIENT]
        expected = cds_summaries(stack, CONFIRMED_INPATIENT, encounter)
        assert sorted(summaries) == sorted(expected)
        assert len(summaries) == len(expected)
        assert "isolation-inpatient" in findings  # guideline 5.2
        assert "droplet-precautions-outpatient" not in findings
        card = page.locator('li.card[data-finding="isolation-inpatient"]')
        badge = card.locator(".badge")
        assert badge.inner_text().strip()  # urgency named on the card
        # The stylesheet loaded under the CSP (style-src 'self'): the badge is styled.
        assert badge.evaluate("e => getComputedStyle(e).fontWeight") == "700"
        boxes = card.locator(".checklist input[type=checkbox]")
        assert boxes.count() == 4  # mask, gown, gloves, eye protection
        boxes.first.check()  # a checklist that works without any script
        assert boxes.first.is_checked()
        boxes.first.uncheck()
        # The page fits the side panel: nothing wider than the 400 px viewport.
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
        page.screenshot(path=str(SCREENSHOTS / "smart-400px.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(SCREENSHOTS / "smart-full.png"), full_page=True)
    finally:
        page.close()
    assert (SCREENSHOTS / "smart-400px.png").stat().st_size > 10_000
    assert (SCREENSHOTS / "smart-full.png").stat().st_size > 10_000


def test_denied_consent_in_the_browser(browser: Any, stack: Stack) -> None:
    page = launch_in_browser(browser, stack, SUSPECTED_OUTPATIENT, 400, deny=True)
    try:
        assert page.locator("[data-problem]").get_attribute("data-problem") == "consent-denied"
        assert "Tilgang ble ikke gitt" in page.locator("h1").inner_text()
    finally:
        page.close()
