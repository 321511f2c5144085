"""An EHR's SMART on FHIR side, for tests: authorisation server and FHIR gateway.

Built on Authlib's Flask ``AuthorizationServer`` (authorization code grant,
public client, PKCE required and S256 only) and served on a free loopback port
from a thread. It behaves like an EHR's SMART endpoints:

- ``GET /fhir/.well-known/smart-configuration``: the SMART configuration;
- ``GET /authorize``: refuses a request without ``aud`` equal to the FHIR base,
  without an S256 code challenge or with an unknown ``launch``; a launch made
  with ``deny=True`` answers ``error=access_denied`` (the user refused); a
  standalone launch (scope ``launch/patient``) gets ``picked_patient``;
- ``POST /token``: the code for a token, with ``patient`` (and ``encounter``)
  from the launch in the token response;
- ``GET /fhir/...``: a gateway in front of the real Medplum FHIR test server
  that checks the bearer token, its scopes and the patient compartment, so a
  client asking for another patient's data is refused as by an EHR.

``new_launch(patient, encounter=None, deny=False)`` plays the EHR opening the
app from a patient's chart: it returns the opaque ``launch`` value.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, Response, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

CODE_LIFETIME_SECONDS = 60
# The service's SMART callback as Flask's test client sees it, and an upstream FHIR base
# that nothing listens on (for tests that never reach FHIR).
CALLBACK = "http://localhost/smart/callback"
UNUSED_UPSTREAM = "http://127.0.0.1:9"


@dataclass
class Launch:
    """The chart the EHR launched the app from."""

    patient: str
    encounter: str | None = None
    deny: bool = False


@dataclass
class Client(ClientMixin):
    client_id: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        wanted = scope.split()
        return " ".join(
            s
            for s in wanted
            if s in ("launch", "launch/patient")
            or (s.startswith("patient/") and s.endswith(".read"))
        )

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # public client: no secret to check

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if endpoint == "token" else True

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    launch: Launch
    expires_at: float = field(default_factory=lambda: time.time() + CODE_LIFETIME_SECONDS)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class IssuedToken:
    patient: str
    encounter: str | None
    scope: str
    expires_at: float


class QuietHandler(WSGIRequestHandler):
    """No access log: its lines would carry codes, states and patient ids."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class S256Only(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - as Authlib declares it


class SmartEhr:
    """The EHR side of a SMART launch, on a loopback port, in front of ``fhir_upstream``."""

    def __init__(self, fhir_upstream: str, *, token_lifetime: int = 3600) -> None:
        self.upstream = fhir_upstream.rstrip("/")
        self.token_lifetime = token_lifetime
        self.clients: dict[str, Client] = {}
        self.launches: dict[str, Launch] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.tokens: dict[str, IssuedToken] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.fhir_requests: list[str] = []
        self.configuration_requests = 0
        self.fhir_down = False  # the gateway answers 503 while set
        self.picked_patient: Launch | None = None  # what the picker chooses on a standalone launch
        self.base_url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir"

    # --- what the test does as the EHR -----------------------------------------

    def register_client(self, client_id: str, redirect_uri: str) -> None:
        self.clients[client_id] = Client(client_id, [redirect_uri])

    def new_launch(self, patient: str, encounter: str | None = None, *, deny: bool = False) -> str:
        launch_id = secrets.token_urlsafe(16)
        self.launches[launch_id] = Launch(patient, encounter, deny)
        return launch_id

    def expire_tokens(self) -> None:
        for token in self.tokens.values():
            token.expires_at = 0

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> SmartEhr:
        self._server = make_server(
            "127.0.0.1", 0, self.app, threaded=True, request_handler=QuietHandler
        )
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- the app ------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask("smart_ehr")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": self.token_lifetime}
        ehr = self

        class CodeGrant(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]  # noqa: RUF012 - as Authlib declares it

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                ehr.codes[code] = AuthorizationCode(
                    code=code,
                    client_id=req.client.client_id,
                    redirect_uri=req.payload.redirect_uri,
                    scope=req.client.get_allowed_scope(req.payload.scope or ""),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    launch=req.user,
                )

            def query_authorization_code(self, code: str, client: Client) -> Any:
                found = ehr.codes.get(code)
                if found and found.client_id == client.client_id and found.expires_at > time.time():
                    return found
                return None

            def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
                ehr.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: AuthorizationCode) -> Launch:
                return authorization_code.launch

        def save_token(token: dict[str, Any], req: Any) -> None:
            # The SMART launch context travels in the token response, next to the token.
            launch: Launch = req.authorization_code.launch
            token["patient"] = launch.patient
            if launch.encounter:
                token["encounter"] = launch.encounter
            ehr.tokens[token["access_token"]] = IssuedToken(
                patient=launch.patient,
                encounter=launch.encounter,
                scope=token.get("scope", ""),
                expires_at=time.time() + int(token["expires_in"]),
            )

        server = AuthorizationServer(app, query_client=self.clients.get, save_token=save_token)
        server.register_grant(CodeGrant, [S256Only(required=True)])

        @app.get("/fhir/.well-known/smart-configuration")
        def smart_configuration() -> Response:
            ehr.configuration_requests += 1
            return jsonify(
                {
                    "issuer": ehr.base_url,
                    "authorization_endpoint": f"{ehr.base_url}/authorize",
                    "token_endpoint": f"{ehr.base_url}/token",
                    "grant_types_supported": ["authorization_code"],
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["none"],
                    "scopes_supported": ["launch", "patient/*.read"],
                    "capabilities": [
                        "launch-ehr",
                        "launch-standalone",
                        "context-standalone-patient",
                        "client-public",
                        "context-ehr-patient",
                        "context-ehr-encounter",
                        "permission-patient",
                        "permission-v1",
                    ],
                }
            )

        @app.get("/authorize")
        def authorize() -> Any:
            args = request.args.to_dict()
            ehr.authorize_requests.append(args)
            if args.get("aud", "").rstrip("/") != ehr.fhir_base:
                return Response("aud is not this EHR's FHIR base", status=400)
            if args.get("code_challenge_method") != "S256":
                return Response("PKCE with S256 is required", status=400)
            launch = ehr.launches.pop(args.get("launch", ""), None)  # a launch opens once
            if launch is None and "launch/patient" in args.get("scope", "").split():
                # Standalone launch: the EHR's patient picker, played by the test.
                launch = ehr.picked_patient
            try:
                grant = server.get_consent_grant(end_user=launch)
            except OAuth2Error as error:
                return Response(f"{error.error}: {error.description}", status=400)
            if launch is None:
                return Response("unknown launch", status=400)
            return server.create_authorization_response(
                grant_user=None if launch.deny else launch, grant=grant
            )

        @app.post("/token")
        def token() -> Any:
            ehr.token_requests.append(request.form.to_dict())
            return server.create_token_response()

        @app.get("/fhir/<path:path>")
        def fhir(path: str) -> Response:
            return ehr._gateway(path)

        return app

    # --- the FHIR gateway ------------------------------------------------------------

    def _outcome(self, status: int, code: str, text: str) -> Response:
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "details": {"text": text}}],
        }
        return Response(_dumps(body), status=status, content_type="application/fhir+json")

    def _gateway(self, path: str) -> Response:
        self.fhir_requests.append(path)
        if self.fhir_down:
            return self._outcome(503, "transient", "FHIR server unavailable")
        header = request.headers.get("Authorization", "")
        issued = (
            self.tokens.get(header.removeprefix("Bearer "))
            if header.startswith("Bearer ")
            else None
        )
        if issued is None or issued.expires_at <= time.time():
            return self._outcome(401, "login", "missing, unknown or expired token")
        resource_type = path.split("/", 1)[0]
        readable = {s.removeprefix("patient/").removesuffix(".read") for s in issued.scope.split()}
        if resource_type not in readable and "*" not in readable:
            return self._outcome(403, "forbidden", f"scope does not cover {resource_type}")
        if "/" not in path:
            compartment = request.args.get("patient") or request.args.get("subject") or ""
            if compartment.removeprefix("Patient/") != issued.patient:
                return self._outcome(403, "forbidden", "search outside the patient compartment")
        upstream = requests.get(
            f"{self.upstream}/{path}",
            params=list(request.args.items(multi=True)),
            headers={"Accept": "application/fhir+json"},
            timeout=30,
        )
        if upstream.status_code == 200 and "/" in path:
            resource = upstream.json()
            ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
            own = resource.get("resourceType") == "Patient" and resource.get("id") == issued.patient
            if not own and ref != f"Patient/{issued.patient}":
                return self._outcome(403, "forbidden", "read outside the patient compartment")
        # Paging links name the upstream server: rewrite them to this gateway.
        body = upstream.text.replace(self.upstream, self.fhir_base)
        return Response(
            body,
            status=upstream.status_code,
            content_type=upstream.headers.get("Content-Type", "application/fhir+json"),
        )


def _dumps(body: Any) -> str:
    import json

    return json.dumps(body)
