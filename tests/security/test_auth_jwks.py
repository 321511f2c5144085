"""Key sets fetched from configured ``jku`` URLs: cached, refreshed on rotation, rate-limited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient

from plugin.security.jwks import (
    MIN_REFRESH_SECONDS,
    KeySetCache,
    KeySetError,
    fetch_jwks,
    keys_by_kid,
)
from tests.support.fake_services import fake_registry
from tests.support.jwt_keys import ISSUER, ec_key, write_trusted_clients

JKU = "https://ehr.test.example/.well-known/jwks.json"
SERVICE_URL = "http://localhost/cds-services/test-view"
OLD = ec_key(kid="2025-key")
NEW = ec_key(kid="2026-key", slot="rotated")


def body() -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "0c7e3f43-0a9b-4e59-9c36-1d5b8c1b8f11",
        "context": {"userId": "Practitioner/1", "patientId": "pat-1"},
        "prefetch": {"conditions": {"resourceType": "Bundle", "type": "searchset"}},
    }


@pytest.fixture
def client(make_app: Any, tmp_path: Path) -> FlaskClient:
    path = write_trusted_clients(tmp_path, [{"iss": ISSUER, "jku": JKU}])
    app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(path)
    )
    return app.test_client()


def call(client: FlaskClient, token: str) -> int:
    response = client.post(SERVICE_URL, json=body(), headers={"Authorization": f"Bearer {token}"})
    return response.status_code


@responses.activate
def test_token_naming_the_configured_jku_is_verified_with_the_fetched_set(
    client: FlaskClient,
) -> None:
    responses.get(JKU, json=OLD.jwks())
    assert call(client, OLD.token(SERVICE_URL, headers={"jku": JKU})) == 200
    assert call(client, OLD.token(SERVICE_URL)) == 200  # no jku header: configured one used
    assert len(responses.calls) == 1  # cached


@responses.activate
def test_attack_unknown_kid_at_a_configured_jku(client: FlaskClient) -> None:
    responses.get(JKU, json=OLD.jwks())
    stranger = ec_key(kid="forged", slot="forged")
    assert call(client, stranger.token(SERVICE_URL, headers={"jku": JKU})) == 401


@responses.activate
def test_jku_that_differs_only_slightly_is_refused(client: FlaskClient) -> None:
    responses.get(JKU, json=OLD.jwks())
    for url in (JKU + "?x=1", JKU.upper(), JKU.replace("https", "http"), JKU + "/"):
        assert call(client, OLD.token(SERVICE_URL, headers={"jku": url})) == 401
    assert len(responses.calls) == 0


@responses.activate
def test_key_set_not_reachable_gives_401_not_500(client: FlaskClient) -> None:
    responses.get(JKU, status=503)
    assert call(client, OLD.token(SERVICE_URL)) == 401


@responses.activate
def test_redirect_from_the_jku_is_not_followed(client: FlaskClient) -> None:
    responses.get(JKU, status=302, headers={"Location": "https://attacker.example/jwks"})
    assert call(client, OLD.token(SERVICE_URL)) == 401
    assert [c.request.url for c in responses.calls] == [JKU]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(
    sets: list[dict[str, Any]], ttl: float = 3600
) -> tuple[KeySetCache, list[str], FakeClock]:
    fetched: list[str] = []
    clock = FakeClock()

    def fetch(url: str) -> Any:
        fetched.append(url)
        return sets[min(len(fetched), len(sets)) - 1]

    return KeySetCache(ttl, fetch=fetch, clock=clock), fetched, clock


def test_rotated_key_is_found_by_refreshing_on_unknown_kid() -> None:
    both = {"keys": [OLD.public_jwk(), NEW.public_jwk()]}
    cache, fetched, clock = make_cache([OLD.jwks(), both])
    assert cache.find(JKU, OLD.kid) is not None
    clock.now += MIN_REFRESH_SECONDS
    assert cache.find(JKU, NEW.kid) is not None
    assert len(fetched) == 2


def test_unknown_kid_refetches_at_most_once_a_minute() -> None:
    cache, fetched, clock = make_cache([OLD.jwks()])
    assert cache.find(JKU, OLD.kid) is not None
    for _ in range(50):
        assert cache.find(JKU, "forged") is None
        clock.now += 1
    assert len(fetched) == 1  # 50 s of forged kids: no new fetch
    clock.now += 10
    assert cache.find(JKU, "forged") is None
    assert len(fetched) == 2


def test_key_set_is_refetched_after_its_ttl() -> None:
    cache, fetched, clock = make_cache([OLD.jwks(), NEW.jwks()], ttl=300)
    assert cache.find(JKU, OLD.kid) is not None
    clock.now += 299
    assert cache.find(JKU, OLD.kid) is not None
    assert len(fetched) == 1
    clock.now += 1
    assert cache.find(JKU, OLD.kid) is None  # the client dropped the old key
    assert cache.find(JKU, NEW.kid) is not None


def test_failed_refresh_keeps_the_last_good_set() -> None:
    calls: list[str] = []

    def fetch(url: str) -> Any:
        calls.append(url)
        if len(calls) > 1:
            raise KeySetError("down")
        return OLD.jwks()

    clock = FakeClock()
    cache = KeySetCache(120, fetch=fetch, clock=clock)
    assert cache.find(JKU, OLD.kid) is not None
    clock.now += 200
    assert cache.find(JKU, OLD.kid) is not None
    assert len(calls) == 2


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"keys": {}},
        {"keys": [1]},
        {"keys": [{"kty": "EC"}]},
        {"keys": [{"kid": "a", "kty": "oct", "k": "c2VjcmV0"}]},
    ],
)
def test_unusable_key_sets_are_refused(data: Any) -> None:
    with pytest.raises(KeySetError):
        keys_by_kid(data, "test")


def test_encryption_keys_are_ignored() -> None:
    jwk = OLD.public_jwk()
    jwk["use"] = "enc"
    assert keys_by_kid({"keys": [jwk]}, "test") == {}


@responses.activate
def test_oversized_key_set_is_refused() -> None:
    responses.get(JKU, body=b"{" + b" " * (300 * 1024) + b"}")
    with pytest.raises(KeySetError, match="larger"):
        fetch_jwks(JKU)


@responses.activate
def test_fetch_returns_the_parsed_set() -> None:
    responses.get(JKU, json=OLD.jwks())
    assert keys_by_kid(fetch_jwks(JKU), JKU).keys() == {OLD.kid}
