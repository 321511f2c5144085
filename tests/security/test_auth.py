"""The calling EHR must prove itself with a CDS Hooks JWT: one test per attack, each a 401.

The attack table (docs/security.md) names these tests; tests/security/test_attack_table.py keeps
the two in step.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient

from tests.support.clock import START, Clock
from tests.support.fake_services import fake_registry
from tests.support.jwt_keys import (
    ISSUER,
    b64url,
    ec_key,
    rsa_key,
    unsigned_token,
    write_trusted_clients,
)

SERVICE_URL = "http://localhost/cds-services/test-view"
FEEDBACK_URL = SERVICE_URL + "/feedback"
DISCOVERY_URL = "http://localhost/cds-services"

ES384 = ec_key()
RS384 = rsa_key()
ES256 = ec_key(kid="ec-256", alg="ES256")
STRANGER = ec_key(kid=ES384.kid, slot="stranger")  # same kid, another private key


def body() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "pat-1"},
        "prefetch": {"conditions": {"resourceType": "Bundle", "type": "searchset"}},
    }


@pytest.fixture
def clients_file(tmp_path: Path) -> Path:
    keys = [ES384.public_jwk(), RS384.public_jwk(), ES256.public_jwk()]
    return write_trusted_clients(tmp_path, [{"iss": ISSUER, "jwks": {"keys": keys}}])


@pytest.fixture
def secure_app(make_app: Any, clients_file: Path) -> Flask:
    app: Flask = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_ALLOW_UNSIGNED="0",
        CDS_TRUSTED_CLIENTS=str(clients_file),
    )
    return app


@pytest.fixture
def client(secure_app: Flask) -> FlaskClient:
    return secure_app.test_client()


def call(client: FlaskClient, token: str | None, url: str = SERVICE_URL, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kw.pop("headers", {}))
    return client.post(url, json=kw.pop("json", body()), headers=headers, **kw)


def assert_401(response: Any) -> dict[str, Any]:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.get_json()["error"]
    assert error["status"] == 401 and error["code"] == "unauthorized"
    assert "Traceback" not in response.get_data(as_text=True)
    return dict(error)


def resign(
    token: str, header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None
) -> str:
    """Swap the header or claims of a signed token, keeping its old signature."""
    head, payload, signature = token.split(".")
    if header is not None:
        head = b64url(json.dumps(header).encode())
    if claims is not None:
        payload = b64url(json.dumps(claims).encode())
    return f"{head}.{payload}.{signature}"


def now() -> int:
    """The app's time: make_app's fixed test clock."""
    return int(START.timestamp())


# --- accepted ---------------------------------------------------------------------------


def test_valid_es384_token_passes(client: FlaskClient) -> None:
    response = call(client, ES384.token(SERVICE_URL))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "cards" in response.get_json()


def test_valid_rs384_token_passes(client: FlaskClient) -> None:
    response = call(client, RS384.token(SERVICE_URL))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_aud_as_array_containing_the_url_passes(client: FlaskClient) -> None:
    response = call(client, ES384.token([SERVICE_URL]))
    assert response.status_code == 200


def test_rsa_key_without_alg_member_verifies_rs384(make_app: Any, tmp_path: Path) -> None:
    jwk = RS384.public_jwk()
    del jwk["alg"]
    path = write_trusted_clients(tmp_path, [{"iss": ISSUER, "jwks": {"keys": [jwk]}}])
    app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(path)
    )
    assert call(app.test_client(), RS384.token(SERVICE_URL)).status_code == 200


def test_feedback_accepts_a_valid_token(client: FlaskClient) -> None:
    feedback = {
        "feedback": [
            {"card": "c-1", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
        ]
    }
    response = call(client, ES384.token(FEEDBACK_URL), url=FEEDBACK_URL, json=feedback)
    assert response.status_code == 200


def test_es256_accepted_only_when_enabled(make_app: Any, clients_file: Path) -> None:
    default = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(clients_file)
    )
    assert_401(call(default.test_client(), ES256.token(SERVICE_URL)))
    enabled = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_ALLOW_UNSIGNED="0",
        CDS_TRUSTED_CLIENTS=str(clients_file),
        CDS_JWT_ALGORITHMS="ES384,RS384,ES256",
    )
    assert call(enabled.test_client(), ES256.token(SERVICE_URL)).status_code == 200


# --- attacks: each answered 401 -------------------------------------------------------------


def test_attack_missing_token(client: FlaskClient) -> None:
    assert_401(call(client, None))


def test_attack_not_a_bearer_scheme(client: FlaskClient) -> None:
    token = ES384.token(SERVICE_URL)
    assert_401(call(client, None, headers={"Authorization": f"Basic {token}"}))


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30.e30.", "....", "Bearer x.y"])
def test_attack_malformed_token(client: FlaskClient, token: str) -> None:
    assert_401(call(client, None, headers={"Authorization": f"Bearer {token}"}))


def test_attack_alg_none(client: FlaskClient) -> None:
    claims = {"iss": ISSUER, "aud": SERVICE_URL, "exp": now() + 300, "iat": now(), "jti": "none-1"}
    token = unsigned_token(claims, {"alg": "none", "typ": "JWT", "kid": ES384.kid})
    assert_401(call(client, token))


def test_attack_hs256_signed_with_the_public_key(client: FlaskClient) -> None:
    # The classic key-confusion attack: the verifier's public key used as an HMAC secret.
    public_pem = ES384.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": ES384.kid}
    claims = {"iss": ISSUER, "aud": SERVICE_URL, "exp": now() + 300, "iat": now(), "jti": "hs-1"}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert_401(call(client, f"{signing_input}.{b64url(mac)}"))


def test_attack_tampered_signature(client: FlaskClient) -> None:
    head, payload, signature = ES384.token(SERVICE_URL).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    assert_401(call(client, f"{head}.{payload}.{b64url(bytes(raw))}"))


def test_attack_tampered_claims(client: FlaskClient) -> None:
    token = ES384.token("https://elsewhere.example/cds-services/test-view")
    claims = {
        "iss": ISSUER,
        "aud": SERVICE_URL,
        "exp": now() + 300,
        "iat": now(),
        "jti": "tampered-1",
    }
    assert_401(call(client, resign(token, claims=claims)))


def test_attack_expired(client: FlaskClient) -> None:
    assert_401(call(client, ES384.token(SERVICE_URL, iat=now() - 600, exp=now() - 120)))


def test_attack_iat_in_the_future(client: FlaskClient) -> None:
    assert_401(call(client, ES384.token(SERVICE_URL, iat=now() + 300, exp=now() + 600)))


def test_token_times_are_read_on_the_services_clock(make_app: Any, clients_file: Path) -> None:
    # The same token before and after the app's injected clock passes its exp.
    clock = Clock(START)
    app = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_ALLOW_UNSIGNED="0",
        CDS_TRUSTED_CLIENTS=str(clients_file),
        CDS_CLOCK=clock,
    )
    first, second = (ES384.token(SERVICE_URL, exp=now() + 300) for _ in range(2))
    assert call(app.test_client(), first).status_code == 200
    clock.now = START + timedelta(seconds=300 + 61)  # past exp and the 60 s skew
    error = assert_401(call(app.test_client(), second))
    assert "expired" in error["message"]


def test_attack_nbf_in_the_future(client: FlaskClient) -> None:
    error = assert_401(call(client, ES384.token(SERVICE_URL, nbf=now() + 300, exp=now() + 600)))
    assert "not yet valid" in error["message"]


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_attack_time_claim_not_an_integer(client: FlaskClient, claim: str) -> None:
    value = str(now() + 300) if claim == "exp" else str(now())
    error = assert_401(call(client, ES384.token(SERVICE_URL, **{claim: value})))
    assert claim in error["message"]


def test_attack_wrong_aud(client: FlaskClient) -> None:
    assert_401(call(client, ES384.token("https://other.example/cds-services/test-view")))


def test_attack_aud_of_another_endpoint_on_this_service(client: FlaskClient) -> None:
    assert_401(call(client, ES384.token(DISCOVERY_URL)))


def test_attack_unknown_iss(client: FlaskClient) -> None:
    assert_401(call(client, ES384.token(SERVICE_URL, iss="https://attacker.example")))


def test_attack_unknown_kid(client: FlaskClient) -> None:
    stranger = ec_key(kid="not-configured", slot="stranger")
    assert_401(call(client, stranger.token(SERVICE_URL)))


def test_attack_trusted_kid_signed_with_another_key(client: FlaskClient) -> None:
    assert_401(call(client, STRANGER.token(SERVICE_URL)))


def test_attack_jku_not_on_the_allowlist(client: FlaskClient) -> None:
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        token = STRANGER.token(SERVICE_URL, headers={"jku": "https://attacker.example/jwks"})
        assert_401(call(client, token))
        assert len(mock.calls) == 0  # the token's URL is never fetched


def test_pinned_keys_verify_a_token_naming_an_unconfigured_jku(client: FlaskClient) -> None:
    # The CDS Hooks Sandbox always names its jku; a service without outbound internet trusts it
    # by a pinned key set, and the named URL is never fetched.
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        token = ES384.token(
            SERVICE_URL, headers={"jku": "https://sandbox.cds-hooks.org/.well-known/jwks.json"}
        )
        assert call(client, token).status_code == 200
        assert len(mock.calls) == 0


def test_attack_replayed_jti(client: FlaskClient) -> None:
    token = ES384.token(SERVICE_URL)
    assert call(client, token).status_code == 200
    assert_401(call(client, token))


def test_attack_replayed_jti_across_two_instances(make_app: Any, clients_file: Path) -> None:
    # make_app puts both apps on one SQLite file, as two workers or hosts share one database.
    config = {
        "CDS_REGISTRY": fake_registry(),
        "CDS_ALLOW_UNSIGNED": "0",
        "CDS_TRUSTED_CLIENTS": str(clients_file),
    }
    first = make_app(**config)
    config["CDS_REGISTRY"] = fake_registry()
    second = make_app(**config)
    assert first.extensions["cds_store"] is not second.extensions["cds_store"]
    token = RS384.token(SERVICE_URL)
    assert call(first.test_client(), token).status_code == 200
    assert_401(call(second.test_client(), token))


def test_same_jti_from_another_issuer_is_not_a_replay(make_app: Any, tmp_path: Path) -> None:
    other = "https://second-ehr.test.example"
    path = write_trusted_clients(
        tmp_path,
        [
            {"iss": ISSUER, "jwks": ES384.jwks()},
            {"iss": other, "jwks": RS384.jwks()},
        ],
    )
    app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(path)
    )
    client = app.test_client()
    assert call(client, ES384.token(SERVICE_URL, jti="shared")).status_code == 200
    assert call(client, RS384.token(SERVICE_URL, iss=other, jti="shared")).status_code == 200


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "aud", "iss"])
def test_attack_missing_required_claim(client: FlaskClient, claim: str) -> None:
    assert_401(call(client, ES384.token(SERVICE_URL, **{claim: None})))


def test_attack_missing_kid(client: FlaskClient) -> None:
    assert_401(call(client, ES384.token(SERVICE_URL, headers={"kid": None})))


def test_attack_token_valid_for_days(client: FlaskClient) -> None:
    assert_401(call(client, ES384.token(SERVICE_URL, exp=now() + 3 * 86400)))


def test_attack_alg_header_swapped_to_a_weaker_one(client: FlaskClient) -> None:
    token = ES384.token(SERVICE_URL)
    header = {"alg": "ES256", "typ": "JWT", "kid": ES384.kid}
    assert_401(call(client, resign(token, header=header)))


def test_attack_rs384_kid_with_es384_alg(client: FlaskClient) -> None:
    header = {"alg": "ES384", "typ": "JWT", "kid": RS384.kid}
    assert_401(call(client, resign(ES384.token(SERVICE_URL), header=header)))


def test_feedback_requires_a_token(client: FlaskClient) -> None:
    feedback = {
        "feedback": [
            {"card": "c-1", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
        ]
    }
    assert_401(call(client, None, url=FEEDBACK_URL, json=feedback))
    # a token for the service URL is not one for its feedback URL
    assert_401(call(client, ES384.token(SERVICE_URL), url=FEEDBACK_URL, json=feedback))


def test_failure_log_says_why_without_the_token(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = ES384.token(SERVICE_URL, iat=now() - 600, exp=now() - 120)
    with caplog.at_level(logging.DEBUG):
        assert_401(call(client, token))
    text = caplog.text
    assert "expired" in text
    for part in token.split("."):
        assert part not in text


# --- tenant, audience behind a proxy, discovery ----------------------------------------------


def test_tenant_must_match_when_configured(make_app: Any, tmp_path: Path) -> None:
    path = write_trusted_clients(
        tmp_path, [{"iss": ISSUER, "tenant": "helse-bergen", "jwks": ES384.jwks()}]
    )
    app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(path)
    )
    client = app.test_client()
    assert_401(call(client, ES384.token(SERVICE_URL, tenant="another-org")))
    assert_401(call(client, ES384.token(SERVICE_URL)))
    assert call(client, ES384.token(SERVICE_URL, tenant="helse-bergen")).status_code == 200


def test_aud_uses_public_url_behind_a_proxy(make_app: Any, clients_file: Path) -> None:
    app = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_ALLOW_UNSIGNED="0",
        CDS_TRUSTED_CLIENTS=str(clients_file),
        CDS_PUBLIC_URL="https://cds.example.org/",
    )
    client = app.test_client()
    public = "https://cds.example.org/cds-services/test-view"
    assert_401(call(client, ES384.token(SERVICE_URL)))
    assert call(client, ES384.token(public)).status_code == 200


def test_discovery_needs_a_token_only_when_configured(make_app: Any, clients_file: Path) -> None:
    open_app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(clients_file)
    )
    assert open_app.test_client().get("/cds-services").status_code == 200
    closed = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_ALLOW_UNSIGNED="0",
        CDS_TRUSTED_CLIENTS=str(clients_file),
        CDS_REQUIRE_AUTH_DISCOVERY="1",
    )
    closed_client = closed.test_client()
    assert_401(closed_client.get("/cds-services"))
    token = ES384.token(DISCOVERY_URL)
    response = closed_client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


# --- development profile ---------------------------------------------------------------------


@pytest.fixture
def dev_client(make_app: Any, clients_file: Path) -> FlaskClient:
    app: Flask = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="1", CDS_TRUSTED_CLIENTS=str(clients_file)
    )
    return app.test_client()


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1"])
def test_unsigned_accepted_from_loopback_in_development(
    dev_client: FlaskClient, address: str
) -> None:
    response = call(dev_client, None, environ_overrides={"REMOTE_ADDR": address})
    assert response.status_code == 200


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.1.2", "::ffff:10.0.0.1", "bogus"])
def test_unsigned_refused_from_elsewhere_in_development(
    dev_client: FlaskClient, address: str
) -> None:
    assert_401(call(dev_client, None, environ_overrides={"REMOTE_ADDR": address}))


def test_unsigned_refused_through_a_local_proxy(dev_client: FlaskClient) -> None:
    response = call(
        dev_client,
        None,
        headers={"X-Forwarded-For": "203.0.113.9"},
        environ_overrides={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert_401(response)


def test_a_bad_token_is_refused_even_in_development(dev_client: FlaskClient) -> None:
    assert_401(call(dev_client, "not.a.token"))


def test_unsigned_refused_by_default(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0")
    assert_401(call(app.test_client(), None))


def test_development_profile_warns_loudly_at_start(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="plugin.security.auth"):
        make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="1")
    assert any(
        "CDS_ALLOW_UNSIGNED=1" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )


# --- refusing unsafe configuration at start --------------------------------------------------


@pytest.mark.parametrize("algorithms", ["none", "HS256", "ES384,HS512", "PS256", ""])
def test_unsafe_algorithm_setting_stops_the_start(make_app: Any, algorithms: str) -> None:
    with pytest.raises(ValueError, match="CDS_JWT_ALGORITHMS"):
        make_app(CDS_REGISTRY=fake_registry(), CDS_JWT_ALGORITHMS=algorithms)


def test_private_key_in_trusted_clients_stops_the_start(make_app: Any, tmp_path: Path) -> None:
    from jwt.algorithms import ECAlgorithm

    private: dict[str, Any] = ECAlgorithm.to_jwk(ES384.private_key, as_dict=True)
    private["kid"] = "leaked"
    path = write_trusted_clients(tmp_path, [{"iss": ISSUER, "jwks": {"keys": [private]}}])
    with pytest.raises(ValueError, match="private key"):
        make_app(CDS_REGISTRY=fake_registry(), CDS_TRUSTED_CLIENTS=str(path))


def test_jku_over_plain_http_stops_the_start(make_app: Any, tmp_path: Path) -> None:
    path = write_trusted_clients(tmp_path, [{"iss": ISSUER, "jku": "http://ehr.example/jwks"}])
    with pytest.raises(ValueError, match="https"):
        make_app(CDS_REGISTRY=fake_registry(), CDS_TRUSTED_CLIENTS=str(path))


def test_unreadable_trusted_clients_file_stops_the_start(make_app: Any, tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="CDS_TRUSTED_CLIENTS"):
        make_app(CDS_REGISTRY=fake_registry(), CDS_TRUSTED_CLIENTS=str(path))


def test_jwks_file_is_read_relative_to_the_clients_file(make_app: Any, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ehr.json").write_text(json.dumps(RS384.jwks()), encoding="utf-8")
    path = write_trusted_clients(tmp_path, [{"iss": ISSUER, "jwks_file": "keys/ehr.json"}])
    app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(path)
    )
    assert call(app.test_client(), RS384.token(SERVICE_URL)).status_code == 200


def test_attack_rsa_key_under_2048_bits(make_app: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.support.jwt_keys import SigningKey

    weak = SigningKey(
        kid="weak",
        alg="RS384",
        private_key=rsa.generate_private_key(public_exponent=65537, key_size=1024),
    )
    path = write_trusted_clients(tmp_path, [{"iss": ISSUER, "jwks": weak.jwks()}])
    app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(path)
    )
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        token = weak.token(SERVICE_URL)  # PyJWT warns when signing; the service refuses
    assert_401(call(app.test_client(), token))


def test_missing_public_url_is_warned_about_when_clients_are_trusted(
    make_app: Any, clients_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="plugin.security.auth"):
        make_app(
            CDS_REGISTRY=fake_registry(),
            CDS_ALLOW_UNSIGNED="0",
            CDS_TRUSTED_CLIENTS=str(clients_file),
        )
    assert any("CDS_PUBLIC_URL" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="plugin.security.auth"):
        make_app(
            CDS_REGISTRY=fake_registry(),
            CDS_ALLOW_UNSIGNED="0",
            CDS_TRUSTED_CLIENTS=str(clients_file),
            CDS_PUBLIC_URL="https://cds.example.org",
        )
    assert not any("CDS_PUBLIC_URL" in r.getMessage() for r in caplog.records)
