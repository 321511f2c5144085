"""The feedback dashboard: login, loopback rule, counts per kind and day, CSV, no patient data."""

from __future__ import annotations

import base64
import csv
import io
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from cds_hooks.models import Card, Coding, HookRequest, Source
from cds_hooks.services import (
    CdsService,
    Evaluation,
    PrefetchData,
    ServiceRegistry,
    StaticCard,
)
from plugin.admin.report import build_report, daily_chart
from plugin.storage.schema import feedback, issued_counts
from tests.storage.test_suppression import call, make_suppression_app, override
from tests.support.clock import Clock

PASSWORD = "correct horse battery staple"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def basic(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def dashboard_app(make_app: Any, **overrides: Any) -> Flask:
    settings = {"CDS_ADMIN_PASSWORD": PASSWORD, **overrides}
    return make_suppression_app(make_app, Clock(NOW), **settings)


def seed(app: Flask, rows: Iterable[tuple[date, str, str | None, str | None]]) -> None:
    """Insert (day, kind, outcome or None for shown only, reason) straight into the store: each
    row a card shown that day (into the day's count), and its feedback if it has an outcome."""
    engine = app.extensions["cds_store"].engine
    shown: Counter[tuple[date, str]] = Counter()
    with engine.begin() as conn:
        for day, kind, outcome, reason in rows:
            at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
            shown[(day, kind)] += 1
            if outcome:
                conn.execute(
                    feedback.insert().values(
                        card_uuid=uuid.uuid4().hex,
                        service_id="sup-view",
                        finding=kind,
                        kind=kind,
                        known_card=True,
                        outcome=outcome,
                        override_code=reason,
                        override_display=reason,
                        user_comment="pasient Ola Nordmann 01019912345",
                        outcome_time=at.isoformat(),
                        received_at=at + timedelta(minutes=3),
                    )
                )
        if shown:
            conn.execute(
                issued_counts.insert(),
                [
                    {
                        "day": day,
                        "service_id": "sup-view",
                        "finding": kind,
                        "kind": kind,
                        "count": n,
                    }
                    for (day, kind), n in shown.items()
                ],
            )


def table_row(html: str, kind: str) -> str:
    start = html.index(f'<tr data-kind="{kind}">')
    return html[start : html.index("</tr>", start)]


def cells(row: str) -> list[str]:
    parts = row.split('<td class="num">')[1:]
    return [part.split("<", 1)[0] for part in parts]


# --- Access -----------------------------------------------------------------------------------


def test_dashboard_is_off_without_a_password(make_app: Any) -> None:
    client = dashboard_app(make_app, CDS_ADMIN_PASSWORD="").test_client()
    response = client.get("/admin/feedback", headers=basic(password=""))
    assert response.status_code == 403
    assert "CDS_ADMIN_PASSWORD" in response.get_json()["error"]["message"]


def test_short_password_keeps_it_off(make_app: Any) -> None:
    client = dashboard_app(make_app, CDS_ADMIN_PASSWORD="short").test_client()
    assert client.get("/admin/feedback", headers=basic(password="short")).status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(password="wrong password here"),
        basic(user="root"),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic !!!"},
    ],
    ids=["none", "wrong-password", "wrong-user", "bearer", "garbage"],
)
def test_login_is_required(make_app: Any, headers: dict[str, str]) -> None:
    client = dashboard_app(make_app).test_client()
    for path in ("/admin/feedback", "/admin/feedback.csv", "/admin/admin.css"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert PASSWORD not in response.get_data(as_text=True)


def test_remote_addresses_are_refused_unless_allowed(make_app: Any) -> None:
    remote = {"REMOTE_ADDR": "10.20.30.40"}
    client = dashboard_app(make_app).test_client()
    response = client.get("/admin/feedback", headers=basic(), environ_base=remote)
    assert response.status_code == 403
    assert client.get("/admin/feedback", headers=basic()).status_code == 200
    assert client.get("/admin/feedback", environ_base={"REMOTE_ADDR": "::1"}).status_code == 401

    allowed = dashboard_app(make_app, CDS_ADMIN_ALLOW_REMOTE="1").test_client()
    assert allowed.get("/admin/feedback", headers=basic(), environ_base=remote).status_code == 200
    assert allowed.get("/admin/feedback", environ_base=remote).status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1"},  # forged: a forwarded request came from elsewhere
    ],
)
def test_a_request_forwarded_by_a_local_proxy_is_not_a_loopback_client(
    make_app: Any, header: dict[str, str]
) -> None:
    # The proxy connects from loopback, but the client it forwards for is elsewhere: the rule
    # is the one auth applies to unsigned calls.
    client = dashboard_app(make_app).test_client()
    response = client.get("/admin/feedback", headers={**basic(), **header})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"


def test_failed_logins_lock_the_address_out_even_for_the_right_password(make_app: Any) -> None:
    clock = Clock(NOW)
    app = make_suppression_app(make_app, clock, CDS_ADMIN_PASSWORD=PASSWORD)
    client = app.test_client()
    wrong = basic(password="wrong password here")
    guesses = [client.get("/admin/feedback", headers=wrong).status_code for _ in range(3000)]
    assert guesses[:5] == [401] * 5
    assert set(guesses[5:]) == {429}  # 3,000 guesses met no lockout before
    locked = client.get("/admin/feedback", headers=basic())
    assert locked.status_code == 429
    assert locked.get_json()["error"]["code"] == "too-many-requests"
    assert 1 <= int(locked.headers["Retry-After"]) <= 15 * 60
    clock.now += timedelta(minutes=15, seconds=1)
    assert client.get("/admin/feedback", headers=basic()).status_code == 200


def test_a_successful_login_resets_the_count(make_app: Any) -> None:
    client = dashboard_app(make_app).test_client()
    wrong = basic(password="wrong password here")
    for _ in range(3):
        for _ in range(4):
            assert client.get("/admin/feedback", headers=wrong).status_code == 401
        assert client.get("/admin/feedback", headers=basic()).status_code == 200
    # A request without credentials (the browser's first) is not counted as a guess.
    for _ in range(10):
        assert client.get("/admin/feedback").status_code == 401


def test_failed_logins_from_many_addresses_lock_the_login_overall(make_app: Any) -> None:
    app = dashboard_app(make_app, CDS_ADMIN_ALLOW_REMOTE="1")
    client = app.test_client()
    wrong = basic(password="wrong password here")
    for n in range(20):
        remote = {"REMOTE_ADDR": f"10.0.0.{n + 1}"}
        assert client.get("/admin/feedback", headers=wrong, environ_base=remote).status_code == 401
    fresh = client.get("/admin/feedback", headers=basic(), environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert fresh.status_code == 429


def test_page_has_a_strict_policy_and_no_inline_code(make_app: Any) -> None:
    client = dashboard_app(make_app).test_client()
    response = client.get("/admin/feedback", headers=basic())
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    html = response.get_data(as_text=True)
    assert "<script" not in html
    assert " style=" not in html
    assert "http://" not in html
    assert "https://" not in html
    css = client.get("/admin/admin.css", headers=basic())
    assert css.status_code == 200
    assert css.mimetype == "text/css"


# --- What it shows ----------------------------------------------------------------------------


def test_counts_follow_calls_and_feedback(make_app: Any) -> None:
    app = dashboard_app(make_app)
    client = app.test_client()
    first = call(client, ["notify-municipal-doctor", "respirator"], patient="pasient-4711")
    override(client, first["notify-municipal-doctor"], "already-notified")
    override(client, first["respirator"], "", outcome="accepted")
    second = call(client, ["notify-municipal-doctor", "respirator"], patient="pasient-4712")
    override(client, second["respirator"], "measures-in-place")
    call(client, ["respirator"], patient="pasient-4713")

    html = client.get("/admin/feedback", headers=basic()).get_data(as_text=True)
    # shown, accepted, overridden, overridden share, suppressed now
    assert cells(table_row(html, "notify-municipal-doctor")) == ["2", "0", "1", "100 %", "1"]
    assert cells(table_row(html, "respirator")) == ["3", "1", "1", "50 %", "1"]
    assert "Allerede varslet kommunelegen: 1" in table_row(html, "notify-municipal-doctor")
    assert "Tiltakene er allerede iverksatt: 1" in table_row(html, "respirator")
    assert "Varsling til kommunelegen" in html  # the kind's topic from the content file
    for secret in ("pasient-4711", "pasient-4712", "pat-1 called"):
        assert secret not in html


def test_days_are_bucketed_and_the_period_is_bounded(make_app: Any) -> None:
    app = dashboard_app(make_app)
    today = NOW.date()
    seed(
        app,
        [
            (today, "respirator", "overridden", "measures-in-place"),
            (today - timedelta(days=1), "respirator", "accepted", None),
            (today - timedelta(days=1), "respirator", None, None),
            (today - timedelta(days=6), "respirator", None, None),
            (today - timedelta(days=7), "respirator", None, None),  # outside a 7-day period
        ],
    )
    client = app.test_client()
    week = client.get("/admin/feedback?days=7", headers=basic()).get_data(as_text=True)
    assert cells(table_row(week, "respirator"))[:3] == ["4", "1", "1"]
    month = client.get("/admin/feedback", headers=basic()).get_data(as_text=True)
    assert cells(table_row(month, "respirator"))[:3] == ["5", "1", "1"]
    for bad in ("abc", "-3", "0", "99999", "²", "9" * 5000, "1e3"):
        response = client.get(f"/admin/feedback?days={bad}", headers=basic())
        assert response.status_code == 200

    rows = list(
        csv.reader(
            io.StringIO(
                client.get("/admin/feedback.csv?days=7", headers=basic()).get_data(as_text=True)
            )
        )
    )
    assert rows[0] == ["date", "card_kind", "event", "override_reason", "count"]
    assert rows[1:] == [
        [(today - timedelta(days=6)).isoformat(), "respirator", "shown", "", "1"],
        [(today - timedelta(days=1)).isoformat(), "respirator", "accepted", "", "1"],
        [(today - timedelta(days=1)).isoformat(), "respirator", "shown", "", "2"],
        [today.isoformat(), "respirator", "overridden", "measures-in-place", "1"],
        [today.isoformat(), "respirator", "shown", "", "1"],
    ]


def test_unknown_reasons_are_counted_as_other_and_free_text_never_shown(make_app: Any) -> None:
    app = dashboard_app(make_app)
    seed(app, [(NOW.date(), "respirator", "overridden", "Ola Nordmann 01019912345")])
    client = app.test_client()
    html = client.get("/admin/feedback", headers=basic()).get_data(as_text=True)
    text = client.get("/admin/feedback.csv", headers=basic()).get_data(as_text=True)
    for page in (html, text):
        assert "Ola Nordmann" not in page
        assert "01019912345" not in page
    assert "other: 1" in table_row(html, "respirator")
    assert "respirator,overridden,other,1" in text


def _formula_kind(request: HookRequest, data: PrefetchData) -> Evaluation:
    card = Card(summary="x", indicator="info", source=Source(label="t", topic=Coding(code="=1+1")))
    return Evaluation([StaticCard(card=card, finding="formula")])


def test_csv_cells_never_start_a_formula(make_app: Any) -> None:
    registry = ServiceRegistry(
        [
            CdsService(
                id="formula",
                hook="patient-view",
                title="t",
                description="d",
                prefetch={},
                evaluate=_formula_kind,
            )
        ]
    )
    app = dashboard_app(make_app, CDS_REGISTRY=registry)
    client = app.test_client()
    body = {"hook": "patient-view", "hookInstance": "h", "context": {"patientId": "p"}}
    assert client.post("/cds-services/formula", json=body).status_code == 200
    response = client.get("/admin/feedback.csv", headers=basic())
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[1][1] == "'=1+1"


def test_empty_period_renders(make_app: Any) -> None:
    client = dashboard_app(make_app).test_client()
    html = client.get("/admin/feedback", headers=basic()).get_data(as_text=True)
    assert "No cards were shown in this period." in html
    assert "No card was overridden in this period." in html


def test_chart_bars_scale_to_the_peak(make_app: Any) -> None:
    app = dashboard_app(make_app)
    today = NOW.date()
    seed(
        app,
        [(today, "respirator", None, None)] * 4
        + [(today - timedelta(days=2), "respirator", None, None)] * 2,
    )
    report = build_report(
        app.extensions["cds_store"].engine, now=NOW, days=7, kind_labels={}, reason_labels={}
    )
    chart = daily_chart(report, report.kinds[0].daily, width=460, height=140)
    heights = sorted(bar.height for bar in chart.bars)
    assert chart.peak == 4
    assert len(heights) == 2
    assert heights[1] == pytest.approx(2 * heights[0])
    assert heights[1] == pytest.approx(chart.plot_bottom - chart.plot_top)


@pytest.mark.postgres
def test_report_over_postgresql(make_app: Any) -> None:
    import os

    url = os.environ.get("CDS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide CDS_TEST_POSTGRES_URL")
        pytest.skip("CDS_TEST_POSTGRES_URL is not set")
    app = dashboard_app(make_app, CDS_DATABASE_URL=url)
    # The database outlives the test: a day far in the future is this test's own.
    far = datetime(2091, 3, 14, 12, 0, tzinfo=UTC)
    kind = f"kind-{uuid.uuid4().hex[:8]}"
    seed(
        app, [(far.date(), kind, "overridden", "measures-in-place"), (far.date(), kind, None, None)]
    )
    report = build_report(
        app.extensions["cds_store"].engine,
        now=far,
        days=1,
        kind_labels={},
        reason_labels={"measures-in-place": "Tiltakene er allerede iverksatt"},
    )
    mine = next(k for k in report.kinds if k.kind == kind)
    assert (mine.total("shown"), mine.total("overridden")) == (2, 1)
    assert mine.daily["shown"] == {far.date(): 2}
    assert dict(mine.reasons) == {"measures-in-place": 1}
