"""The call command's key pair: created once, private to its owner, and trusted by the service."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest

from plugin.cli.client_key import KEY_FILE, load_or_create
from plugin.cli.http import EXIT_REFUSED, CommandError
from plugin.security.auth import Authenticator, Rejected
from plugin.security.jwks import KeySetCache, load_trusted_clients
from tests.support.cli_support import run_command


def remember_all(_jti: str, _until: datetime) -> bool:
    return True


def test_the_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_create(tmp_path / "data")
    assert second.kid == first.kid
    assert second.iss == first.iss


def test_two_installations_are_two_clients(tmp_path: Path) -> None:
    one = load_or_create(tmp_path / "one")
    two = load_or_create(tmp_path / "two")
    assert one.kid != two.kid
    assert one.iss != two.iss


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(CommandError) as caught:
        load_or_create(tmp_path)
    assert "chmod 600" in caught.value.message
    assert caught.value.exit_code == EXIT_REFUSED


def test_a_broken_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_text("not a key")
    path.chmod(0o600)
    with pytest.raises(CommandError, match="not a readable PEM"):
        load_or_create(tmp_path)


def test_the_trust_entry_holds_no_private_key(tmp_path: Path) -> None:
    entry = load_or_create(tmp_path).trust_entry()
    (jwk,) = entry["jwks"]["keys"]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-384" and jwk["alg"] == "ES384"
    assert "d" not in jwk


def test_the_service_verifies_tokens_signed_with_the_key(tmp_path: Path) -> None:
    key = load_or_create(tmp_path)
    trust = tmp_path / "trusted.json"
    trust.write_text(json.dumps({"clients": [key.trust_entry()]}))
    authenticator = Authenticator(
        load_trusted_clients(trust), frozenset({"ES384"}), KeySetCache(60)
    )
    audience = "http://127.0.0.1:8080/cds-services/mkopper-patient-view"
    caller = authenticator.verify(key.token(audience), audience, remember_all)
    assert caller.iss == key.iss
    claims = jwt.decode(key.token(audience), options={"verify_signature": False})
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["exp"] > datetime.now(UTC).timestamp()
    with pytest.raises(Rejected):
        authenticator.verify(key.token(audience), audience + "-other", remember_all)


def test_print_trust_prints_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    code, out, _err = run_command(["call", "--print-trust"], capsys)
    assert code == 0
    entry = json.loads(out)
    assert entry == load_or_create(tmp_path).trust_entry()
