"""The SMART on FHIR page: launch, callback, session and page, against a test EHR.

The EHR side (tests/smart_auth_server.py) is a real OAuth authorisation server
(Authlib) on a loopback port; the app is driven with Flask's test client, and
the one browser hop (the EHR's authorize endpoint) with requests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from plugin.smart import render as smart_render
from plugin.smart.views import LAUNCH_TTL_SECONDS
from plugin.storage.schema import smart_sessions
from tests.support import fhirserver
from tests.support.clock import START, Clock
from tests.support.fake_services import fake_registry
from tests.support.fhirserver import FhirTestServer
from tests.support.smart_auth_server import CALLBACK, UNUSED_UPSTREAM, SmartEhr

fhir_server = fhirserver.fhir_server  # pytest fixtures, used by name
fhir_store = fhirserver.fhir_store


@pytest.fixture
def smart_app(make_app: Any, ehr: SmartEhr) -> Flask:
    app: Flask = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base)
    return app


def start_launch(client: FlaskClient, ehr: SmartEhr, launch_id: str) -> str:
    """The EHR opens the app; the browser follows to the EHR's authorize endpoint.

    Returns the callback path (with query) the EHR redirects the browser to.
    """
    response = client.get("/smart/launch", query_string={"iss": ehr.fhir_base, "launch": launch_id})
    assert response.status_code == 302, response.get_data(as_text=True)
    authorize = requests.get(response.headers["Location"], allow_redirects=False, timeout=10)
    assert authorize.status_code == 302, authorize.text
    location = authorize.headers["Location"]
    assert location.startswith(CALLBACK)
    return location.removeprefix("http://localhost")


def open_session(
    client: FlaskClient, ehr: SmartEhr, patient: str, encounter: str | None = None
) -> None:
    """A whole EHR launch: afterwards ``client`` holds a page session for ``patient``."""
    response = client.get(start_launch(client, ehr, ehr.new_launch(patient, encounter)))
    assert response.status_code == 303, response.get_data(as_text=True)


def problem(response: Any) -> str | None:
    """The error page's kind (``data-problem``), or None on a page without one."""
    html = response.get_data(as_text=True)
    marker = 'data-problem="'
    if marker not in html:
        return None
    return html.split(marker, 1)[1].split('"', 1)[0]


# --- Launch ------------------------------------------------------------------------------


def test_launch_sends_pkce_s256_state_aud_and_scopes(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    response = client.get("/smart/launch", query_string={"iss": ehr.fhir_base, "launch": "abc"})
    assert response.status_code == 302
    target = urlsplit(response.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{ehr.base_url}/authorize"
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == "mkopper-cds"
    assert query["redirect_uri"] == CALLBACK
    assert query["aud"] == ehr.fhir_base
    assert query["launch"] == "abc"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43  # base64url of a SHA-256 digest
    assert len(query["state"]) >= 43
    # Default scopes: launch plus read access to what the services' prefetch reads.
    assert query["scope"].split() == ["launch", "patient/Condition.read"]
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http on loopback only


@pytest.mark.parametrize(
    ("version", "scope"), [("1", "patient/Condition.read"), ("2", "patient/Condition.rs")]
)
def test_scopes_in_smart_app_launch_1_or_2_syntax(
    make_app: Any, ehr: SmartEhr, version: str, scope: str
) -> None:
    app = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base,
        CDS_SMART_SCOPE_VERSION=version,
    )
    response = app.test_client().get(
        "/smart/launch", query_string={"iss": ehr.fhir_base, "launch": "abc"}
    )
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["scope"][0].split() == ["launch", scope]


def test_an_unknown_scope_version_stops_the_service_at_start(make_app: Any) -> None:
    with pytest.raises(ValueError, match="CDS_SMART_SCOPE_VERSION"):
        make_app(CDS_SMART_SCOPE_VERSION="3")


def test_standalone_launch_asks_the_ehr_to_pick_a_patient(smart_app: Flask, ehr: SmartEhr) -> None:
    from tests.support.smart_auth_server import Launch

    client = smart_app.test_client()
    response = client.get("/smart/standalone", query_string={"iss": ehr.fhir_base})
    assert response.status_code == 302
    query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    assert query["scope"].split() == ["launch/patient", "patient/Condition.read"]
    assert "launch" not in query
    assert query["aud"] == ehr.fhir_base
    ehr.picked_patient = Launch("p9")
    authorize = requests.get(response.headers["Location"], allow_redirects=False, timeout=10)
    callback = client.get(authorize.headers["Location"].removeprefix("http://localhost"))
    assert callback.status_code == 303
    assert [t.patient for t in ehr.tokens.values()] == ["p9"]
    refused = client.get("/smart/standalone", query_string={"iss": "https://evil.example"})
    assert problem(refused) == "fhir-not-allowed"


def test_each_launch_gets_its_own_state_and_challenge(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    seen = []
    for launch_id in ("one", "two"):
        location = client.get(
            "/smart/launch", query_string={"iss": ehr.fhir_base, "launch": launch_id}
        ).headers["Location"]
        query = parse_qs(urlsplit(location).query)
        seen.append((query["state"][0], query["code_challenge"][0]))
    assert seen[0][0] != seen[1][0]
    assert seen[0][1] != seen[1][1]


def test_iss_not_on_the_allowlist_gets_no_outbound_call(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    netloc = ehr.base_url.removeprefix("http://")
    for iss in (
        "https://evil.example/fhir",
        ehr.base_url,
        ehr.fhir_base + "/other",
        f"http://user:pw@{netloc}/fhir",  # user info could hide another host
        ehr.fhir_base + "?x=1",
        ehr.fhir_base + "#f",
        "javascript:alert(1)",
        "file:///etc/passwd",
    ):
        response = client.get("/smart/launch", query_string={"iss": iss, "launch": "x"})
        assert response.status_code == 403
        assert problem(response) == "fhir-not-allowed"
    assert ehr.configuration_requests == 0


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"iss": "x"},
        {"launch": "x"},
        {"iss": "", "launch": ""},
        {"iss": "x" * 5000, "launch": "y"},
    ],
)
def test_launch_without_iss_or_launch_is_refused(smart_app: Flask, query: dict[str, str]) -> None:
    response = smart_app.test_client().get("/smart/launch", query_string=query)
    assert response.status_code == 400
    assert problem(response) == "launch-invalid"


def test_launch_value_is_single_use(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    query = {"iss": ehr.fhir_base, "launch": "once"}
    assert client.get("/smart/launch", query_string=query).status_code == 302
    again = client.get("/smart/launch", query_string=query)
    assert again.status_code == 400
    assert problem(again) == "launch-invalid"


def test_a_launch_value_is_remembered_for_its_lifetime_on_the_apps_clock(
    clocked_smart_app: Flask, ehr: SmartEhr, clock: Clock
) -> None:
    client = clocked_smart_app.test_client()
    query = {"iss": ehr.fhir_base, "launch": "ten-minutes"}
    assert client.get("/smart/launch", query_string=query).status_code == 302
    clock.now = START + timedelta(seconds=LAUNCH_TTL_SECONDS - 1)
    assert problem(client.get("/smart/launch", query_string=query)) == "launch-invalid"
    # Past its lifetime the EHR would refuse the value itself; the service no longer holds it.
    clock.now = START + timedelta(seconds=LAUNCH_TTL_SECONDS + 1)
    assert client.get("/smart/launch", query_string=query).status_code == 302


def test_unreachable_smart_configuration_is_fhir_unavailable(make_app: Any) -> None:
    dead = "http://127.0.0.1:9/fhir"
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=dead)
    response = app.test_client().get("/smart/launch", query_string={"iss": dead, "launch": "x"})
    assert response.status_code == 502
    assert problem(response) == "fhir-unavailable"


# --- Callback ----------------------------------------------------------------------------


def test_state_is_single_use(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    callback = start_launch(client, ehr, ehr.new_launch("p1"))
    first = client.get(callback)
    assert first.status_code == 303
    assert first.headers["Location"] == "/smart/"
    replay = client.get(callback)
    assert replay.status_code == 400
    assert problem(replay) == "launch-invalid"


def test_callback_in_another_browser_is_refused(smart_app: Flask, ehr: SmartEhr) -> None:
    callback = start_launch(smart_app.test_client(), ehr, ehr.new_launch("p1"))
    other = smart_app.test_client()  # no launch binding cookie
    response = other.get(callback)
    assert response.status_code == 400
    assert problem(response) == "launch-invalid"
    assert ehr.token_requests == []  # the code was never exchanged


@pytest.mark.parametrize("query", ["state=nope&code=x", "code=x", f"state={'s' * 5000}&code=x"])
def test_unknown_state_is_refused(smart_app: Flask, query: str) -> None:
    response = smart_app.test_client().get(f"/smart/callback?{query}")
    assert response.status_code == 400
    assert problem(response) == "launch-invalid"


def test_denied_consent_has_its_own_page(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    callback = start_launch(client, ehr, ehr.new_launch("p1", deny=True))
    assert "error=access_denied" in callback
    response = client.get(callback)
    assert response.status_code == 403
    assert problem(response) == "consent-denied"
    assert "Tilgang ble ikke gitt" in response.get_data(as_text=True)


def test_token_exchange_sends_the_pkce_verifier(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    callback = start_launch(client, ehr, ehr.new_launch("p1"))
    assert client.get(callback).status_code == 303
    (form,) = ehr.token_requests
    assert form["grant_type"] == "authorization_code"
    assert form["client_id"] == "mkopper-cds"
    assert form["redirect_uri"] == CALLBACK
    assert 43 <= len(form["code_verifier"]) <= 128
    assert "client_secret" not in form


def test_tampered_code_fails_authorisation(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    callback = start_launch(client, ehr, ehr.new_launch("p1"))
    response = client.get(callback.replace("code=", "code=x"))
    assert response.status_code == 502
    assert problem(response) == "authorization-failed"


def test_access_token_stays_on_the_server(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    callback = start_launch(client, ehr, ehr.new_launch("patient-secret-id", "enc-secret-id"))
    response = client.get(callback)
    assert response.status_code == 303
    (access_token,) = ehr.tokens
    cookies = " ".join(response.headers.getlist("Set-Cookie"))
    assert access_token not in cookies
    assert "patient-secret-id" not in cookies
    # The stored row is encrypted: neither the token nor the patient is readable in the table.
    engine = smart_app.extensions["cds_store"].engine
    with engine.connect() as conn:
        rows = conn.execute(sa.select(smart_sessions)).mappings().all()
    assert rows
    for row in rows:
        assert access_token not in row["payload"]
        assert "patient-secret-id" not in row["payload"]
        assert len(row["key_hash"]) == 64


def test_logs_carry_no_token_code_state_or_patient(
    smart_app: Flask, ehr: SmartEhr, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = smart_app.test_client()
    callback = start_launch(client, ehr, ehr.new_launch("patient-in-log-test", "enc-in-log-test"))
    query = parse_qs(urlsplit(callback).query)
    assert client.get(callback).status_code == 303
    client.get("/smart/")  # the FHIR side is unreachable here: an error page, logged
    client.get(callback)  # a replayed state, logged as refused
    (access_token,) = ehr.tokens
    secrets_seen = [
        access_token,
        query["code"][0],
        query["state"][0],
        "patient-in-log-test",
        "enc-in-log-test",
    ]
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "smart" in text  # the calls were logged at all
    for secret in secrets_seen:
        assert secret not in text


# --- Session -----------------------------------------------------------------------------


def test_page_without_a_session_says_it_expired(smart_app: Flask) -> None:
    client = smart_app.test_client()
    response = client.get("/smart/")
    assert response.status_code == 401
    assert problem(response) == "session-expired"
    client.set_cookie("mkopper-smart", "forged-value")
    response = client.get("/smart/")
    assert response.status_code == 401
    assert problem(response) == "session-expired"


def test_session_ends_with_the_token(make_app: Any) -> None:
    short = SmartEhr(UNUSED_UPSTREAM, token_lifetime=60).start()
    clock = Clock(START)
    try:
        short.register_client("mkopper-cds", CALLBACK)
        app = make_app(
            CDS_REGISTRY=fake_registry(),
            CDS_ALLOWED_FHIR_SERVERS=short.fhir_base,
            CDS_CLOCK=clock,
        )
        client = app.test_client()
        open_session(client, short, "p1")
        clock.now = START + timedelta(seconds=61)  # the token's 60 s have passed
        response = client.get("/smart/")
        assert response.status_code == 401
        assert problem(response) == "session-expired"
    finally:
        short.stop()


def test_pages_carry_a_strict_csp(smart_app: Flask, ehr: SmartEhr) -> None:
    client = smart_app.test_client()
    for response in (
        client.get("/smart/"),
        client.get("/smart/launch", query_string={"iss": "https://evil.example", "launch": "x"}),
    ):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "script-src" not in csp  # no script at all: default-src 'none' covers it
        assert "style-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        assert "<script" not in response.get_data(as_text=True)


def test_frame_ancestors_setting(make_app: Any, ehr: SmartEhr) -> None:
    app = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_SMART_FRAME_ANCESTORS="https://ehr.example.org",
    )
    response = app.test_client().get("/smart/")
    assert response.headers["Content-Security-Policy"].endswith(
        "frame-ancestors https://ehr.example.org"
    )
    assert "X-Frame-Options" not in response.headers


def test_cookies_are_secure_and_host_prefixed_off_loopback(make_app: Any, ehr: SmartEhr) -> None:
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base)
    client = app.test_client()
    response = client.get(
        "/smart/launch",
        query_string={"iss": ehr.fhir_base, "launch": "x"},
        base_url="https://cds.example.org",
    )
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-mkopper-smart-launch=")
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert "Path=/" in cookie
    redirect_uri = parse_qs(urlsplit(response.headers["Location"]).query)["redirect_uri"][0]
    assert redirect_uri == "https://cds.example.org/smart/callback"


@pytest.mark.parametrize(
    ("base_url", "secure"),
    [
        ("http://localhost", False),
        ("http://127.0.0.1:8080", False),
        ("http://[::1]:8080", False),
        ("http://cds.example.org", True),  # behind a TLS proxy the host is public
        ("https://127.0.0.1", True),
    ],
)
def test_secure_cookie_decision(make_app: Any, base_url: str, secure: bool) -> None:
    app = make_app(CDS_REGISTRY=fake_registry())
    response = app.test_client().get("/smart/", base_url=base_url)  # clears the session cookie
    cookie = response.headers["Set-Cookie"]
    assert ("Secure" in cookie) is secure
    assert cookie.startswith("__Host-") is secure


@pytest.mark.parametrize("forwarded_host", ["http://127.0.0.1:8080", "http://localhost"])
def test_an_https_public_url_keeps_cookies_secure_whatever_the_proxy_forwards(
    make_app: Any, forwarded_host: str
) -> None:
    # A proxy that forwards plain http and a loopback Host (a common default) must not turn
    # the browser's cookies into plain ones: the browser is on the https public URL.
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_PUBLIC_URL="https://cds.example.org")
    response = app.test_client().get("/smart/", base_url=forwarded_host)
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie
    assert cookie.startswith("__Host-")


def test_english_error_page(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_LANGUAGE="en")
    html = app.test_client().get("/smart/").get_data(as_text=True)
    assert '<html lang="en">' in html
    assert "The session has expired" in html


# --- Rendering ---------------------------------------------------------------------------


def test_page_texts_have_the_same_keys_in_both_languages() -> None:
    nb, en = smart_render.page_texts("nb"), smart_render.page_texts("en")
    assert set(nb) == set(en)
    assert nb["nothing_applies"] == "Ingen m-kopper-tiltak for denne pasienten"


def test_an_unknown_language_stops_the_service_at_start(make_app: Any) -> None:
    with pytest.raises(ValueError, match="setting CDS_LANGUAGE must be one of nb, en"):
        make_app(CDS_LANGUAGE="de")


def test_detail_lists_become_checklists_and_html_is_escaped() -> None:
    detail = (
        "Ansatte bruker **utstyr**:\n\n- Kirurgisk munnbind\n- Hansker <b>\n\n"
        "Se [rutinen](https://kvalitet.helse-bergen.no/docs/pub/dok00499.htm) og "
        "[dette](javascript:alert(1)) <script>x</script>"
    )
    blocks = smart_render.blocks(detail)
    assert [bool(b.items) for b in blocks] == [False, True, False]
    assert str(blocks[0].text) == "Ansatte bruker <strong>utstyr</strong>:"
    assert [str(item) for item in blocks[1].items] == ["Kirurgisk munnbind", "Hansker &lt;b&gt;"]
    last = str(blocks[2].text)
    assert '<a href="https://kvalitet.helse-bergen.no/docs/pub/dok00499.htm"' in last
    assert "javascript:" not in last.split("</a>", 1)[1].split("[dette]")[0]
    assert "<script>" not in last
    assert "&lt;script&gt;" in last


def test_rules_and_underscore_emphasis_outside_urls() -> None:
    blocks = smart_render.blocks(
        "Tekst.\n\n---\n_Kilde: punkt 5.2._ [a_b_c](https://example.org/x_y_z)"
    )
    assert [b.rule for b in blocks] == [False, True, False]
    last = str(blocks[2].text)
    assert last.startswith("<em>Kilde: punkt 5.2.</em> ")
    assert 'href="https://example.org/x_y_z"' in last
    assert ">a_b_c</a>" in last


def test_cards_sort_most_urgent_first() -> None:
    from cds_hooks.models import Card, Source

    def card(indicator: Any, summary: str) -> Card:
        return Card(summary=summary, indicator=indicator, source=Source(label="s"))

    ordered = smart_render.most_urgent_first(
        [card("info", "a"), card("critical", "b"), card("warning", "c"), card("critical", "d")]
    )
    assert [c.summary for c in ordered] == ["b", "d", "c", "a"]


# --- With the FHIR test server -----------------------------------------------------------


@pytest.fixture
def fhir_ehr(fhir_store: FhirTestServer) -> Iterator[SmartEhr]:
    server = SmartEhr(fhir_store.base_url).start()
    server.register_client("mkopper-cds", CALLBACK)
    try:
        yield server
    finally:
        server.stop()


def _conditions(patient: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Condition",
            "id": f"{patient}-c{i}",
            "subject": {"reference": f"Patient/{patient}"},
            "code": {"text": "test"},
        }
        for i in range(count)
    ]


@pytest.mark.fhir_server
def test_page_runs_the_services_on_data_fetched_with_the_token(
    make_app: Any, fhir_store: FhirTestServer, fhir_ehr: SmartEhr
) -> None:
    fhir_store.load([{"resourceType": "Patient", "id": "p1"}, *_conditions("p1", 2)])
    fhir_store.load([{"resourceType": "Patient", "id": "p2"}, *_conditions("p2", 5)])
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=fhir_ehr.fhir_base)
    client = app.test_client()
    open_session(client, fhir_ehr, "p1")
    response = client.get("/smart/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html
    assert "2 conditions" in html  # p1's two, not p2's five
    assert 'data-finding="test-finding"' in html
    assert any(path.startswith("Condition") for path in fhir_ehr.fhir_requests)
    (access_token,) = fhir_ehr.tokens
    assert access_token not in html


@pytest.mark.fhir_server
def test_fhir_server_down_gives_a_retry_page(
    make_app: Any, fhir_store: FhirTestServer, fhir_ehr: SmartEhr
) -> None:
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=fhir_ehr.fhir_base)
    client = app.test_client()
    open_session(client, fhir_ehr, "p1")
    fhir_ehr.fhir_down = True
    response = client.get("/smart/")
    assert response.status_code == 502
    assert problem(response) == "fhir-unavailable"
    assert 'href="/smart/"' in response.get_data(as_text=True)
    fhir_ehr.fhir_down = False
    assert client.get("/smart/").status_code == 200  # the session survives an outage


@pytest.mark.fhir_server
def test_token_refused_by_the_ehr_asks_to_reopen(
    make_app: Any, fhir_store: FhirTestServer, fhir_ehr: SmartEhr
) -> None:
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=fhir_ehr.fhir_base)
    client = app.test_client()
    open_session(client, fhir_ehr, "p1")
    assert client.get("/smart/").status_code == 200
    fhir_ehr.expire_tokens()  # revoked by the EHR before its expires_in
    response = client.get("/smart/")
    assert response.status_code == 502
    assert problem(response) == "fhir-unavailable"
    assert "Åpne appen på nytt fra pasientens journal." in response.get_data(as_text=True)


@pytest.mark.fhir_server
def test_nothing_applies_page(
    make_app: Any, fhir_store: FhirTestServer, fhir_ehr: SmartEhr
) -> None:
    """The real guideline: a patient without m-kopper gets the plain 'nothing applies' line."""
    bundle = json.loads(
        (
            fhirserver.SERVER_DIR.parents[1] / "fhir_profiles" / "patients" / "mk-control.json"
        ).read_text()
    )
    status, _ = fhir_store.request("POST", "/", bundle)
    assert status == 200
    app = make_app(CDS_ALLOWED_FHIR_SERVERS=fhir_ehr.fhir_base)
    client = app.test_client()
    open_session(client, fhir_ehr, "mk-control")
    html = client.get("/smart/").get_data(as_text=True)
    assert "Ingen m-kopper-tiltak for denne pasienten" in html
    assert 'class="card ' not in html
    assert "sist endret 21.03.25" in html  # the guideline version from the content file
