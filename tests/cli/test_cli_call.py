"""`mkopper-cds call`: context, prefetch, signing, output and exit codes.

The service runs for real on a thread (JWT checked against a trusted-clients
file); the FHIR server is mocked with ``responses``. The end-to-end test with
the real FHIR test server and the guideline's services is test_cli_e2e.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from cds_hooks.fhir import parse_resource
from cds_hooks.models import Card, HookRequest, Source
from cds_hooks.services import (
    CdsService,
    Evaluation,
    PrefetchData,
    ServiceRegistry,
    StaticCard,
)
from plugin.cli import client_key
from plugin.cli.call_request import HOOKS, CallInput, build_context, parse_code
from plugin.cli.client_key import load_or_create
from plugin.cli.http import (
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
)
from tests.support.cli_support import run_command, serving, write_trust
from tests.support.clock import START
from tests.support.fake_services import fake_registry
from tests.support.fhir import searchset

FHIR = "http://fhir.test.example/r4"
TOKEN = "fhir-token-must-not-leak-7f3a"


class Recorder:
    """A service evaluator that keeps each request and answers with one card."""

    def __init__(self) -> None:
        self.requests: list[HookRequest] = []

    def __call__(self, request: HookRequest, data: PrefetchData) -> Evaluation:
        self.requests.append(request)
        conditions = data.get("conditions")
        summary = "conditions unknown" if conditions is None else f"{len(conditions)} conditions"
        card = Card(
            summary=summary,
            detail="**Isoler** pasienten.",
            indicator="critical",
            source=Source(label="test source"),
        )
        return Evaluation([StaticCard(card=card, finding="test-finding")])


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def registry(recorder: Recorder) -> ServiceRegistry:
    chart = {
        "conditions": "Condition?patient={{context.patientId}}",
        "encounter": "Encounter/{{context.encounterId}}",
    }
    return ServiceRegistry(
        [
            CdsService(
                id=f"rec-{hook}",
                hook=hook,
                title="Recorder",
                description="Keeps the request.",
                prefetch=chart,
                evaluate=recorder,
                required_context=(),
            )
            for hook in HOOKS
        ]
    )


@pytest.fixture
def client_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "client"
    monkeypatch.setenv("CDS_DATA_DIR", str(directory))
    # The CLI signs on the clock of the app it calls: make_app's fixed test clock.
    monkeypatch.setattr(client_key, "clock", START.timestamp)
    monkeypatch.delenv("CDS_FHIR_TOKEN", raising=False)
    monkeypatch.delenv("CDS_SERVICE_URL", raising=False)
    return directory


def start(make_app: Any, tmp_path: Path, client_dir: Path, reg: ServiceRegistry) -> Any:
    trust = write_trust(tmp_path, [load_or_create(client_dir).trust_entry()])
    app = make_app(CDS_ALLOW_UNSIGNED="0", CDS_TRUSTED_CLIENTS=str(trust), CDS_REGISTRY=reg)
    return serving(app)


@pytest.fixture
def service(make_app: Any, tmp_path: Path, client_dir: Path, recorder: Recorder) -> Iterator[str]:
    with start(make_app, tmp_path, client_dir, registry(recorder)) as base:
        yield base


@pytest.fixture
def fhir() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")
        # `call` first reads the Patient, so that a wrong id is an error and not "no cards".
        mock.get(f"{FHIR}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
        yield mock


def fhir_urls(mock: responses.RequestsMock) -> list[str]:
    """The prefetch URLs asked of the FHIR server (the mock also sees the calls to the
    service; the Patient read that checks the id is left out)."""
    return [
        c.request.url
        for c in mock.calls
        if str(c.request.url).startswith(FHIR) and c.request.url != f"{FHIR}/Patient/p1"
    ]


def condition(cid: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"}}


def test_patient_view_prints_the_cards(
    service: str, fhir: responses.RequestsMock, recorder: Recorder, capsys: Any
) -> None:
    fhir.get(f"{FHIR}/Condition", json=searchset([condition("c1"), condition("c2")]))
    code, out, err = run_command(
        ["call", "patient-view", "--patient", "p1", "--fhir-server", FHIR, "--service", service],
        capsys,
    )
    assert code == 0, err
    assert "rec-patient-view (patient-view): 1 card" in out
    assert "CRITICAL" in out and "2 conditions" in out
    assert "Isoler pasienten" in out  # markdown rendered, not shown as **...**
    (sent,) = recorder.requests
    assert sent.context == {"userId": "Practitioner/mkopper-cds-tester", "patientId": "p1"}
    assert sent.fhirServer is not None and str(sent.fhirServer).rstrip("/") == FHIR
    assert sent.prefetch is not None and set(sent.prefetch) == {"conditions"}
    assert "encounter" in err  # the encounter template could not be filled: said so
    assert fhir_urls(fhir) == [f"{FHIR}/Condition?patient=p1"]


def test_json_prints_the_raw_response(
    service: str, fhir: responses.RequestsMock, capsys: Any
) -> None:
    fhir.get(f"{FHIR}/Condition", json=searchset([condition("c1")]))
    code, out, _err = run_command(
        [
            "call",
            "patient-view",
            "--patient",
            "p1",
            "--fhir-server",
            FHIR,
            "--service",
            service,
            "--json",
        ],
        capsys,
    )
    assert code == 0
    (card,) = json.loads(out)["cards"]
    assert card["summary"] == "1 conditions" and card["indicator"] == "critical"


def test_a_missing_encounter_is_sent_as_null_and_pages_are_joined(
    service: str, fhir: responses.RequestsMock, recorder: Recorder, capsys: Any
) -> None:
    fhir.get(f"{FHIR}/Encounter/e9", status=404, json={"resourceType": "OperationOutcome"})
    page2 = f"{FHIR}/Condition?patient=p1&_page=2"
    fhir.get(page2, json=searchset([condition("c3")]))
    fhir.get(
        f"{FHIR}/Condition?patient=p1",
        json=searchset([condition("c1"), condition("c2")], next_url=page2),
    )
    code, _out, err = run_command(
        [
            "call",
            "encounter-start",
            "--patient",
            "p1",
            "--encounter",
            "e9",
            "--fhir-server",
            FHIR,
            "--service",
            service,
        ],
        capsys,
    )
    assert code == 0, err
    (sent,) = recorder.requests
    assert sent.prefetch is not None
    assert sent.prefetch["encounter"] is None
    ids = [e["resource"]["id"] for e in sent.prefetch["conditions"]["entry"]]
    assert ids == ["c1", "c2", "c3"]


def test_a_next_page_on_another_server_is_not_followed(
    service: str, fhir: responses.RequestsMock, recorder: Recorder, capsys: Any
) -> None:
    fhir.get(
        f"{FHIR}/Condition",
        json=searchset([condition("c1")], next_url="http://elsewhere.example/Condition?p=2"),
    )
    code, _out, err = run_command(
        [
            "call",
            "patient-view",
            "--patient",
            "p1",
            "--fhir-server",
            FHIR,
            "--service",
            service,
            "--fhir-token",
            TOKEN,
        ],
        capsys,
    )
    assert code == 0
    assert "conditions: not sent (next page is on another server)" in err
    assert fhir_urls(fhir) == [f"{FHIR}/Condition?patient=p1"]
    assert recorder.requests[0].prefetch == {}


def test_the_fhir_token_goes_to_the_fhir_server_and_the_service_only(
    service: str,
    fhir: responses.RequestsMock,
    recorder: Recorder,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CDS_FHIR_TOKEN", TOKEN)
    fhir.get(f"{FHIR}/Condition", json=searchset())
    code, out, err = run_command(
        ["call", "patient-view", "--patient", "p1", "--fhir-server", FHIR, "--service", service],
        capsys,
    )
    assert code == 0
    fhir_calls = [c for c in fhir.calls if str(c.request.url).startswith(FHIR)]
    assert [c.request.url for c in fhir_calls] == [
        f"{FHIR}/Patient/p1",
        f"{FHIR}/Condition?patient=p1",
    ]
    for fhir_call in fhir_calls:
        assert fhir_call.request.headers["Authorization"] == f"Bearer {TOKEN}"
    auth = recorder.requests[0].fhirAuthorization
    assert auth is not None and auth.access_token == TOKEN and auth.patient == "p1"
    assert "patient/Condition.read" in auth.scope
    assert TOKEN not in out + err


def test_no_prefetch_sends_none_and_fetches_nothing(
    service: str, fhir: responses.RequestsMock, recorder: Recorder, capsys: Any
) -> None:
    code, _out, _err = run_command(
        [
            "call",
            "order-sign",
            "--patient",
            "p1",
            "--order",
            "sct:112798008",
            "--fhir-server",
            FHIR,
            "--service",
            service,
            "--no-prefetch",
        ],
        capsys,
    )
    assert code == 0
    assert fhir_urls(fhir) == []
    (sent,) = recorder.requests
    assert sent.prefetch is None
    (order,) = [e["resource"] for e in sent.context["draftOrders"]["entry"]]
    assert order["code"]["coding"] == [{"system": "http://snomed.info/sct", "code": "112798008"}]
    assert order["status"] == "draft"


def test_data_the_service_cannot_get_is_a_clear_412(
    make_app: Any, tmp_path: Path, client_dir: Path, fhir: responses.RequestsMock, capsys: Any
) -> None:
    with start(make_app, tmp_path, client_dir, fake_registry()) as base:
        code, out, err = run_command(
            [
                "call",
                "patient-view",
                "--patient",
                "p1",
                "--fhir-server",
                FHIR,
                "--service",
                base,
                "--no-prefetch",
            ],
            capsys,
        )
    assert code == EXIT_REFUSED
    assert "(HTTP 412)" in err and "prefetchKey=conditions" in err
    assert out == ""


@pytest.mark.parametrize("status", [404, 410])
@pytest.mark.parametrize("extra", [[], ["--no-prefetch"]])
def test_a_patient_the_fhir_server_does_not_have_is_not_no_cards(
    service: str,
    fhir: responses.RequestsMock,
    recorder: Recorder,
    capsys: Any,
    status: int,
    extra: list[str],
) -> None:
    fhir.get(f"{FHIR}/Patient/typo-42", status=status, json={"resourceType": "OperationOutcome"})
    fhir.get(f"{FHIR}/Condition", json=searchset())
    argv = ["call", "patient-view", "--patient", "typo-42", "--fhir-server", FHIR]
    code, out, err = run_command([*argv, "--service", service, *extra], capsys)
    assert code == EXIT_NOT_FOUND
    err = " ".join(err.split())  # the terminal wraps long lines
    assert f"patient not found (HTTP {status})" in err and "--patient" in err
    assert "typo-42" not in err  # messages never name a patient id
    assert "No cards" not in out and recorder.requests == []


def test_an_untrusted_client_is_told_how_to_be_trusted(
    make_app: Any, tmp_path: Path, client_dir: Path, recorder: Recorder, capsys: Any
) -> None:
    stranger = load_or_create(tmp_path / "someone-else").trust_entry()
    trust = write_trust(tmp_path, [stranger])
    app = make_app(
        CDS_ALLOW_UNSIGNED="0",
        CDS_TRUSTED_CLIENTS=str(trust),
        CDS_REGISTRY=registry(recorder),
        CDS_REQUIRE_AUTH_DISCOVERY="1",
    )
    with serving(app) as base:
        code, _out, err = run_command(
            [
                "call",
                "patient-view",
                "--patient",
                "p1",
                "--fhir-server",
                FHIR,
                "--service",
                base,
                "--no-prefetch",
            ],
            capsys,
        )
    assert code == EXIT_UNAUTHORIZED
    assert "HTTP 401" in err and "--print-trust" in err
    assert recorder.requests == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_unreachable_service_exits_3(client_dir: Path, capsys: Any) -> None:
    code, _out, err = run_command(
        [
            "call",
            "patient-view",
            "--patient",
            "p1",
            "--fhir-server",
            FHIR,
            "--service",
            f"http://127.0.0.1:{free_port()}",
        ],
        capsys,
    )
    assert code == EXIT_UNREACHABLE
    assert "cannot connect" in err


def test_a_fhir_server_refusing_the_token_exits_4(
    service: str, fhir: responses.RequestsMock, recorder: Recorder, capsys: Any
) -> None:
    fhir.get(f"{FHIR}/Condition", status=401, json={"resourceType": "OperationOutcome"})
    code, _out, err = run_command(
        [
            "call",
            "patient-view",
            "--patient",
            "p1",
            "--fhir-server",
            FHIR,
            "--service",
            service,
            "--fhir-token",
            TOKEN,
        ],
        capsys,
    )
    assert code == EXIT_UNAUTHORIZED
    assert "refused the token (HTTP 401)" in err and TOKEN not in err
    assert recorder.requests == []


def test_an_answer_that_is_not_cds_hooks_is_an_error(client_dir: Path, capsys: Any) -> None:
    base = "http://cds.test.example"
    with responses.RequestsMock() as mock:
        mock.get(
            f"{base}/cds-services",
            json={"services": [{"id": "odd", "hook": "patient-view", "description": "Odd."}]},
        )
        mock.get(f"{FHIR}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
        mock.post(f"{base}/cds-services/odd", json={"cards": [{"summary": "no indicator"}]})
        code, _out, err = run_command(
            ["call", "patient-view", "--patient", "p1", "--fhir-server", FHIR, "--service", base],
            capsys,
        )
    assert code == EXIT_REFUSED
    assert "not a CDS Hooks response" in err and "cards.0.indicator" in err


def test_several_services_for_one_hook_need_a_service_id(client_dir: Path, capsys: Any) -> None:
    base = "http://cds.test.example"
    services = [{"id": i, "hook": "patient-view", "description": "x"} for i in ("a", "b")]
    with responses.RequestsMock() as mock:
        mock.get(f"{base}/cds-services", json={"services": services})
        code, _out, err = run_command(
            ["call", "patient-view", "--patient", "p1", "--fhir-server", FHIR, "--service", base],
            capsys,
        )
    assert code == EXIT_USAGE
    assert "--service-id" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["call", "encounter-start", "--patient", "p1"], "needs --encounter"),
        (["call", "order-select", "--patient", "p1"], "needs at least one --order"),
        (["call", "problem-list-item-create", "--patient", "p1"], "--condition"),
        (["call", "patient-view"], "--patient"),
        (["call", "patient-view", "--patient", "p1", "--order", "mystery"], "code system"),
        (["call"], "give the hook"),
        (["call", "patient-view", "--patient", "p1", "--service", "ftp://x"], "--service"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, client_dir: Path, capsys: Any) -> None:
    code, _out, err = run_command([*argv, "--fhir-server", FHIR], capsys)
    assert code == EXIT_USAGE
    assert message in err


@pytest.mark.parametrize(
    ("text", "system", "code"),
    [
        ("112798008", "http://snomed.info/sct", "112798008"),
        ("100383-9", "http://loinc.org", "100383-9"),
        ("B04", "http://hl7.org/fhir/sid/icd-10", "B04"),
        ("loinc:100888-7", "http://loinc.org", "100888-7"),
        ("icd10no:B04", "http://hl7.org/fhir/sid/icd-10-no", "B04"),
        ("urn:oid:2.16.578.1.12.4.1.1.7110|B04", "urn:oid:2.16.578.1.12.4.1.1.7110", "B04"),
    ],
)
def test_codes_are_read_with_their_system(text: str, system: str, code: str) -> None:
    assert parse_code(text) == {"system": system, "code": code}


@pytest.mark.parametrize("text", ["mystery", "12345", "|B04", "foo:123"])
def test_codes_of_unknown_system_are_refused(text: str) -> None:
    with pytest.raises(CommandError):
        parse_code(text)


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_context_carries_valid_r4_resources(hook: str) -> None:
    call = CallInput(
        hook=hook,
        patient="p1",
        user="Practitioner/u1",
        encounter="e1",
        orders=(parse_code("112798008"),),
        conditions=(parse_code("359814004"),),
        verification="provisional",
    )
    context = build_context(call)
    assert context["patientId"] == "p1" and context["userId"] == "Practitioner/u1"
    assert context["encounterId"] == "e1"
    bundles = [v for v in context.values() if isinstance(v, dict)]
    assert len(bundles) == (
        0 if hook in {"patient-view", "encounter-start", "encounter-discharge"} else 1
    )
    for value in bundles:
        parse_resource(value)
        for entry in value["entry"]:
            parse_resource(entry["resource"])
            assert entry["resource"]["subject" if "subject" in entry["resource"] else "participant"]
    if hook == "order-select":
        assert context["selections"] == ["ServiceRequest/draft-order-1"]
    if hook == "problem-list-item-create":
        (entry,) = context["conditions"]["entry"]
        status = entry["resource"]["verificationStatus"]["coding"][0]["code"]
        assert status == "provisional"


def test_a_fhir_server_that_is_not_a_url_is_a_usage_error(client_dir: Path, capsys: Any) -> None:
    code, _out, err = run_command(
        ["call", "patient-view", "--patient", "p1", "--fhir-server", "fhir.example/r4?x=1"],
        capsys,
    )
    assert code == EXIT_USAGE
    assert "--fhir-server" in err
