"""The Flask application: how the m-kopper CDS service plugs into an EHR."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask, Request
from flask.sessions import SecureCookieSessionInterface
from flask_cors import CORS

from cds_hooks.catalog import build_registry
from cds_hooks.fhir import ClientLimits, FhirClient
from cds_hooks.knowledge import Language, load_knowledge
from cds_hooks.prefetch import FhirAccess
from cds_hooks.services import ServiceRegistry
from plugin import errors
from plugin.admin import views as admin
from plugin.api import body_limit, headers, metrics, views
from plugin.api.json_codec import JSONProvider
from plugin.api.pipeline import Pipeline
from plugin.config import database_url, load_settings
from plugin.security import auth
from plugin.smart import views as smart
from plugin.storage import suppression
from plugin.storage.store import Clock, Store, create_db_engine, migrate, utcnow
from plugin.storage.suppression import Policy, policy_from_knowledge


class _NoCookieSession(SecureCookieSessionInterface):
    """Opens no cookie session; ``flask.session`` is then Flask's null session (never saved)."""

    def open_session(self, app: Flask, request: Request) -> None:
        return None


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    registry: ServiceRegistry | None = None,
    policy: Policy | None = None,
    clock: Clock = utcnow,
) -> Flask:
    """Build the app: the one place its parts meet.

    ``test_config`` overrides settings. A test may hand in its own ``registry`` and
    suppression ``policy``, and the ``clock``: the one time that storage, suppression and the
    services' laboratory lookback window read.
    """
    settings = load_settings(overrides=test_config)

    app = Flask(__name__)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["CDS_MAX_BODY_BYTES"]
    app.json = JSONProvider(app)  # orjson for jsonify; keys in the order given
    # No state lives in Flask's cookie session (the SMART page and the dashboard keep theirs
    # server-side), so none is opened: a call no longer builds a cookie signer for nothing.
    app.session_interface = _NoCookieSession()
    level = logging.getLevelName(str(settings["CDS_LOG_LEVEL"]).upper())
    logging.getLogger().setLevel(level)
    # urllib3 logs each request line at DEBUG, and a FHIR query names the patient.
    logging.getLogger("urllib3").setLevel(max(level, logging.INFO))

    # The guideline content, loaded and validated once: the registry, the suppression policy
    # and the SMART page all read this one copy.
    knowledge = load_knowledge(settings["CDS_CONTENT_FILE"] or None)
    language: Language = settings["CDS_LANGUAGE"]
    if registry is None:
        # Uncapped here: the pipeline cuts to CDS_MAX_CARDS after suppressed cards are
        # removed, so a suppressed card makes room for the next most urgent one.
        registry = build_registry(knowledge, language=language, max_cards=None, clock=clock)
    if policy is None:
        policy = policy_from_knowledge(knowledge, language)

    url = database_url(settings)
    if not settings.get("CDS_SKIP_MIGRATE"):
        migrate(url)
    app.extensions["cds_store"] = Store(
        create_db_engine(url),
        clock,
        retention=timedelta(days=settings["CDS_FEEDBACK_RETENTION_DAYS"]),
    )
    fhir = FhirAccess(
        client=FhirClient(
            ClientLimits(
                timeout_s=settings["CDS_FHIR_TIMEOUT_MS"] / 1000,
                max_pages=settings["CDS_FHIR_MAX_PAGES"],
            ),
            ca_bundle=settings["CDS_FHIR_CA_BUNDLE"] or None,
        ),
        allowed=settings["CDS_ALLOWED_FHIR_SERVERS"],
        budget_ms=settings["CDS_PREFETCH_BUDGET_MS"],
    )
    app.extensions["cds_fhir"] = fhir
    app.extensions["cds_registry"] = registry

    origins = settings["CDS_CORS_ORIGINS"]
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
    suppression.init_app(app, policy)
    app.extensions["cds_pipeline"] = Pipeline(
        registry=registry,
        fhir=fhir,
        suppressions=app.extensions["cds_suppression"],
        max_cards=settings["CDS_MAX_CARDS"],
    )
    admin.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(views.bp)
    smart.init_app(app, knowledge.content)
    app.after_request(views.log_call)
    return app
