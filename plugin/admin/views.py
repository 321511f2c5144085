"""The infection-control dashboard: how cards are received, per kind and day, with a CSV export.

``GET /admin/feedback`` (HTML with server-side SVG charts) and
``GET /admin/feedback.csv``, behind HTTP Basic with the credentials from
CDS_ADMIN_USER / CDS_ADMIN_PASSWORD, compared in constant time. Without a
password the dashboard is off. Only loopback clients are served unless
CDS_ADMIN_ALLOW_REMOTE=1 (then put it behind TLS: Basic sends the password
with every request). The page loads nothing from elsewhere and runs no script,
so its Content-Security-Policy allows only its own stylesheet. Failed logins
lock the login (429) for one address, or for all, for the rest of the lockout period.
"""

from __future__ import annotations

import csv
import hmac
import io
import time
from datetime import date

from flask import Blueprint, Flask, Response, current_app, render_template, request

from cds_hooks.errors import CdsError, Forbidden, Unauthorized
from plugin.admin.report import (
    EVENTS,
    MAX_DAYS,
    Report,
    build_report,
    daily_chart,
    reasons_chart,
)
from plugin.errors import error_response
from plugin.security.network import from_loopback
from plugin.security.ratelimit import OVERALL, FixedWindow, TooManyRequests, client_key
from plugin.storage.store import utcnow
from plugin.storage.suppression import get_issued_counts, get_suppressions

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")

DEFAULT_DAYS = 30
MIN_PASSWORD_LENGTH = 12
BASIC_CHALLENGE = 'Basic realm="mkopper-cds admin", charset="UTF-8"'
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# Failed logins: so many from one client address, or from all together, lock the login for
# the rest of the lockout period, even for the right password (per worker process).
LOCKOUT_FAILURES = 5
LOCKOUT_FAILURES_OVERALL = 20
LOCKOUT_SECONDS = 15 * 60
# A cell starting with one of these is run as a formula by spreadsheet programs.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class AdminLoginRequired(Unauthorized):
    default_message = "The dashboard needs the admin user name and password."


def _credentials_match(user: str, password: str) -> bool:
    config = current_app.config
    expected_user = str(config.get("CDS_ADMIN_USER") or "").encode("utf-8")
    expected_password = str(config.get("CDS_ADMIN_PASSWORD") or "").encode("utf-8")
    # Both compared, always: the time taken says nothing about which one was wrong.
    user_ok = hmac.compare_digest(user.encode("utf-8"), expected_user)
    password_ok = hmac.compare_digest(password.encode("utf-8"), expected_password)
    return user_ok and password_ok


@bp.before_request
def require_admin() -> Response | None:
    config = current_app.config
    try:
        # The same rule as for unsigned calls: a request a proxy forwarded came from elsewhere,
        # even when the proxy itself connects from loopback.
        if not config["CDS_ADMIN_ALLOW_REMOTE"] and not from_loopback(request):
            raise Forbidden("The dashboard is served to loopback addresses only.")
        if len(str(config.get("CDS_ADMIN_PASSWORD") or "")) < MIN_PASSWORD_LENGTH:
            raise Forbidden(
                "The dashboard is off: CDS_ADMIN_PASSWORD is not set "
                f"(it needs {MIN_PASSWORD_LENGTH} characters or more)."
            )
        failures: FixedWindow = current_app.extensions["admin_login_failures"]
        overall: FixedWindow = current_app.extensions["admin_login_failures_overall"]
        address = client_key(request.remote_addr)
        wait = max(failures.retry_after(address), overall.retry_after(OVERALL))
        if wait:
            raise TooManyRequests(wait, "Too many failed logins; try again later.")
        login = request.authorization
        if login is None or login.type != "basic":
            raise AdminLoginRequired()  # the browser's first request: not a guess
        if not _credentials_match(login.username or "", login.password or ""):
            failures.hit(address)
            overall.hit(OVERALL)
            raise AdminLoginRequired()
        failures.reset(address)
    except CdsError as error:
        response = error_response(error)
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = BASIC_CHALLENGE
        if isinstance(error, TooManyRequests):
            response.headers["Retry-After"] = str(error.retry_after)
        return response
    return None


@bp.after_request
def page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


def _days() -> int:
    raw = request.args.get("days", "")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 4:
        return DEFAULT_DAYS
    return max(1, min(int(raw), MAX_DAYS))


def _report(days: int) -> Report:
    # This process's cards shown go in first; the other workers' within their flush interval.
    get_issued_counts().flush()
    suppressions = get_suppressions()
    policy = suppressions.policy
    return build_report(
        suppressions.engine,
        now=suppressions.clock(),
        days=days,
        kind_labels=policy.kind_labels or {},
        reason_labels=policy.reason_labels or {},
    )


@bp.get("/feedback")
def dashboard() -> str:
    days = _days()
    report = _report(days)
    overall = daily_chart(
        report, {event: report.daily_total(event) for event in EVENTS}, width=960, height=220
    )
    per_kind = [
        (kind, daily_chart(report, kind.daily, width=460, height=140)) for kind in report.kinds
    ]
    reason_totals = report.reason_totals()
    return render_template(
        "admin/feedback.html",
        report=report,
        days=days,
        day_choices=(7, 30, 90, 365),
        overall=overall,
        per_kind=per_kind,
        reasons=reasons_chart(reason_totals, report.reason_labels, width=960),
        reason_totals=reason_totals,
        events=EVENTS,
    )


def _cell(value: str) -> str:
    return f"'{value}" if value.startswith(FORMULA_START) else value


@bp.get("/feedback.csv")
def export_csv() -> Response:
    report = _report(_days())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["date", "card_kind", "event", "override_reason", "count"])
    for day, kind, event, reason, count in report.csv_rows():
        writer.writerow([day, _cell(kind), event, _cell(reason), count])
    filename = f"mkopper-feedback-{date.isoformat(report.last_day)}.csv"
    return Response(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@bp.get("/admin.css")
def stylesheet() -> Response:
    return Response(render_template("admin/admin.css"), mimetype="text/css")


@bp.get("/favicon.svg")
def favicon() -> Response:
    # Served here so that the browser's icon request is not a 404 under the page's CSP.
    return Response(render_template("admin/favicon.svg"), mimetype="image/svg+xml")


def init_app(app: Flask) -> None:
    clock = app.extensions["cds_store"].clock
    # A test's injected clock drives the lockout; otherwise the monotonic one (no wall jumps).
    seconds = time.monotonic if clock is utcnow else (lambda: clock().timestamp())
    app.extensions["admin_login_failures"] = FixedWindow(
        LOCKOUT_FAILURES, LOCKOUT_SECONDS, clock=seconds
    )
    app.extensions["admin_login_failures_overall"] = FixedWindow(
        LOCKOUT_FAILURES_OVERALL, LOCKOUT_SECONDS, clock=seconds
    )
    app.register_blueprint(bp)
