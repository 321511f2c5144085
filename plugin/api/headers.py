"""Security headers on every response, errors included.

The JSON API gets the strictest set: nothing in it may be run, framed or
cached. HTML pages get the common set and a minimal policy; each page sets its
own stricter Content-Security-Policy and framing rule (the SMART page may be
framed by the EHR, the dashboard never), and what a view sets is kept: every
header here is a default, never an override. No page of the service loads a
script.
"""

from __future__ import annotations

from flask import Flask, Response

from plugin.context import this_app, this_request
from plugin.version import CDS_HOOKS_VERSION, __version__

COMMON: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Answers carry patient-derived advice: no shared or browser cache may keep them.
    "Cache-Control": "no-store",
    # The release and the CDS Hooks version it implements (CDS Hooks 3.0 ballot: advertise it).
    "X-CDS-Hooks-Version": CDS_HOOKS_VERSION,
    "X-Mkopper-CDS-Version": __version__,
}
API: dict[str, str] = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HTML: dict[str, str] = {
    "Content-Security-Policy": "object-src 'none'; base-uri 'none'",
}
HSTS = "max-age=31536000"


def _served_over_https() -> bool:
    public_url = str(this_app().config.get("CDS_PUBLIC_URL") or "")
    return this_request().is_secure or public_url.startswith("https://")


# Each set once, with the lower-case name the presence check compares.
_API_DEFAULTS = tuple((name, name.lower(), value) for name, value in {**COMMON, **API}.items())
_HTML_DEFAULTS = tuple((name, name.lower(), value) for name, value in {**COMMON, **HTML}.items())


def add_security_headers(response: Response) -> Response:
    # An empty text/html body is Flask's automatic OPTIONS answer, not a page.
    page = response.mimetype == "text/html" and (
        response.is_streamed or len(response.get_data()) > 0
    )
    headers = response.headers
    # What the view set is kept (``setdefault``), checked against one set of the names
    # present rather than a scan of the headers per name.
    present = {name.lower() for name in headers.keys()}
    for name, lower, value in _HTML_DEFAULTS if page else _API_DEFAULTS:
        if lower not in present:
            headers.add(name, value)
    if _served_over_https():
        headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def init_app(app: Flask) -> None:
    """Register the headers once (calling this twice is harmless)."""
    if app.extensions.get("cds_security_headers"):
        return
    app.extensions["cds_security_headers"] = True
    app.after_request(add_security_headers)
