"""The Flask application: how the m-kopper CDS service plugs into an EHR."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_cors import CORS

from cds_hooks.fhir import Allowlist, ClientLimits, FhirClient
from cds_hooks.services import ServiceRegistry
from plugin import errors
from plugin.admin import views as admin
from plugin.api import body_limit, headers, metrics, views
from plugin.api.views import FhirAccess
from plugin.config import as_int, as_list, database_url, load_settings
from plugin.security import auth
from plugin.smart import views as smart
from plugin.storage import suppression
from plugin.storage.store import Store, create_db_engine, migrate, utcnow


def build_registry(settings: Mapping[str, Any]) -> ServiceRegistry:
    """The guideline's services, from the content file named in the settings."""
    from cds_hooks.catalog import build_registry as build
    from cds_hooks.knowledge import load_knowledge

    knowledge = load_knowledge(settings.get("CDS_CONTENT_FILE") or None)
    # Uncapped here: views.call_service cuts to CDS_MAX_CARDS after suppressed cards are
    # removed, so a suppressed card makes room for the next most urgent one.
    return build(knowledge, language=str(settings["CDS_LANGUAGE"]), max_cards=None)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` overrides settings (and may inject ``CDS_REGISTRY`` and
    ``CDS_CLOCK``, the one clock that storage and suppression read)."""
    overrides = dict(test_config or {})
    registry = overrides.pop("CDS_REGISTRY", None)
    clock = overrides.pop("CDS_CLOCK", utcnow)
    settings = load_settings(overrides=overrides)

    app = Flask(__name__)
    app.config.update(settings)
    app.config["CDS_MAX_CARDS_INT"] = as_int("CDS_MAX_CARDS", settings["CDS_MAX_CARDS"])
    if app.config["CDS_MAX_CARDS_INT"] < 1:
        raise ValueError("setting CDS_MAX_CARDS must be at least 1")
    app.config["MAX_CONTENT_LENGTH"] = as_int("CDS_MAX_BODY_BYTES", settings["CDS_MAX_BODY_BYTES"])
    app.config["SECRET_KEY"] = settings["CDS_SECRET_KEY"] or secrets.token_hex(32)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    level = logging.getLevelName(str(settings["CDS_LOG_LEVEL"]).upper())
    logging.getLogger().setLevel(level)
    # urllib3 logs each request line at DEBUG, and a FHIR query names the patient.
    logging.getLogger("urllib3").setLevel(max(level, logging.INFO))

    url = database_url(settings)
    if not overrides.get("CDS_SKIP_MIGRATE"):
        migrate(url)
    app.extensions["cds_store"] = Store(create_db_engine(url), clock)
    app.extensions["cds_fhir"] = FhirAccess(
        client=FhirClient(
            ClientLimits(
                timeout_s=as_int("CDS_FHIR_TIMEOUT_MS", settings["CDS_FHIR_TIMEOUT_MS"]) / 1000,
                max_pages=as_int("CDS_FHIR_MAX_PAGES", settings["CDS_FHIR_MAX_PAGES"]),
            ),
            ca_bundle=str(settings["CDS_FHIR_CA_BUNDLE"] or "") or None,
        ),
        # A bad entry stops the service at start rather than at the first call.
        allowed=Allowlist.from_setting(str(settings["CDS_ALLOWED_FHIR_SERVERS"] or "")),
        budget_ms=as_int("CDS_PREFETCH_BUDGET_MS", settings["CDS_PREFETCH_BUDGET_MS"]),
    )
    app.extensions["cds_registry"] = registry if registry is not None else build_registry(settings)

    origins = as_list(settings["CDS_CORS_ORIGINS"])
    if origins:
        CORS(
            app,
            resources={r"/cds-services*": {"origins": origins}},
            allow_headers=["Authorization", "Content-Type"],
            methods=["GET", "POST", "OPTIONS"],
            supports_credentials=False,
            max_age=600,
        )

    errors.init_app(app)
    headers.init_app(app)
    body_limit.init_app(app)
    auth.init_app(app)
    suppression.init_app(app)
    admin.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(views.bp)
    smart.init_app(app)
    app.after_request(views.log_call)
    return app
