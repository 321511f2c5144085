"""End to end, as a tester does it: seed the FHIR test server, start the service, call each hook.

The FHIR test server (Medplum, validating every write) gets every synthetic
patient through ``mkopper-cds seed``. The service runs as a real gunicorn
process trusting the ``call`` command's key (from ``call --print-trust``) and
allowed to fetch from that FHIR server. Every hook is then called through
``mkopper-cds call``, with prefetch (filled by the command from the service's
own templates) and without (the service fetches for itself), and the cards are
compared with the expectations in ``fhir_profiles/patients/index.json`` and
with what the guideline says for a few moments worth naming.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugin.cli.main import main
from plugin.cli.seed import load_patients
from tests.support.cli_support import run_command, write_trust
from tests.support.fhirserver import FhirTestServer, require_server
from tests.support.paths import ROOT
from tests.support.service_process import ServiceProcess

pytestmark = pytest.mark.fhir_server


INDEX = json.loads((ROOT / "fhir_profiles" / "patients" / "index.json").read_text("utf-8"))
PATIENTS = {p.id: p for p in load_patients()}
EXPECTED = {entry["id"]: entry for entry in INDEX["patients"]}

INTUBATION = "sct:112798008"  # insertion of endotracheal tube (TERMINOLOGY.md, verified)
MPOX_PCR = "loinc:100383-9"  # Monkeypox virus DNA by NAA (TERMINOLOGY.md, verified)
MPOX = "sct:359814004"  # Mpox (disorder) (TERMINOLOGY.md, verified)


@dataclass(frozen=True)
class Stack:
    fhir: str
    service: str
    client_dir: Path


def quietly(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_server()
    root = tmp_path_factory.mktemp("e2e")
    client_dir = root / "client"
    fhir = FhirTestServer().start()
    service: ServiceProcess | None = None
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("CDS_DATA_DIR", str(client_dir))
            # A real process has the real clock, so the samples are dated as of today (the
            # command's default): the laboratory results fall inside the lookback window.
            code, out, err = quietly(["seed", "--fhir-server", fhir.base_url])
            assert code == 0, err
            total = sum(len(p.entries) for p in PATIENTS.values())
            assert f"{total} created" in out
            code, out, err = quietly(["call", "--print-trust"])
            assert code == 0, err
        trust = write_trust(root, [json.loads(out)])
        service = ServiceProcess(
            root / "service",
            workers=1,
            CDS_TRUSTED_CLIENTS=str(trust),
            CDS_ALLOWED_FHIR_SERVERS=fhir.base_url,
            # Default page cap: the large record's thousand Conditions must fit in it.
            # CI machines are slow, hence the wider time budget.
            CDS_PREFETCH_BUDGET_MS="20000",
            CDS_FHIR_TIMEOUT_MS="10000",
        )
        yield Stack(fhir.base_url, service.base, client_dir)
    finally:
        if service is not None:
            service.stop()
        fhir.stop()


def current_encounter(patient_id: str) -> str:
    (encounter,) = [
        e["resource"]["id"]
        for e in PATIENTS[patient_id].entries
        if e["resource"]["resourceType"] == "Encounter" and e["resource"]["status"] == "in-progress"
    ]
    return str(encounter)


def hook_args(hook: str, patient_id: str) -> list[str]:
    args = ["--patient", patient_id, "--encounter", current_encounter(patient_id)]
    if hook in ("order-select", "order-sign"):
        args += ["--order", INTUBATION]
    if hook == "problem-list-item-create":
        args += ["--condition", MPOX, "--verification", "provisional"]
    return args


def call_topics(
    stack: Stack, hook: str, args: list[str], capsys: Any, *, prefetch: bool
) -> list[str]:
    """The finding of each card (its topic code), as the call command prints them in JSON."""
    argv = ["call", hook, *args, "--fhir-server", stack.fhir, "--service", stack.service, "--json"]
    if not prefetch:
        argv.append("--no-prefetch")
    code, out, err = run_command(argv, capsys)
    assert code == 0, err
    cards: list[dict[str, Any]] = json.loads(out)["cards"]
    return sorted(card["source"]["topic"]["code"] for card in cards)


@pytest.fixture(autouse=True)
def client_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(stack.client_dir))
    monkeypatch.delenv("CDS_FHIR_TOKEN", raising=False)


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
@pytest.mark.parametrize("patient_id", sorted(EXPECTED))
def test_patient_view_gives_the_expected_cards(
    stack: Stack, patient_id: str, prefetch: bool, capsys: Any
) -> None:
    topics = call_topics(
        stack, "patient-view", hook_args("patient-view", patient_id), capsys, prefetch=prefetch
    )
    assert topics == sorted(EXPECTED[patient_id]["expectedCards"])


HOOKS = (
    "encounter-start",
    "encounter-discharge",
    "appointment-book",
    "order-select",
    "order-sign",
    "problem-list-item-create",
)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("patient_id", sorted(EXPECTED))
def test_each_hook_answers_alike_with_and_without_prefetch(
    stack: Stack, hook: str, patient_id: str, capsys: Any
) -> None:
    args = hook_args(hook, patient_id)
    with_prefetch = call_topics(stack, hook, args, capsys, prefetch=True)
    without = call_topics(stack, hook, args, capsys, prefetch=False)
    assert with_prefetch == without
    status = EXPECTED[patient_id]["expected"]["status"]
    if status == "none" and hook != "problem-list-item-create":
        assert with_prefetch == []  # no m-kopper, nothing to say


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
def test_guideline_moments(stack: Stack, prefetch: bool, capsys: Any) -> None:
    def topics(hook: str, patient_id: str, *extra: str) -> list[str]:
        args = ["--patient", patient_id, "--encounter", current_encounter(patient_id), *extra]
        return call_topics(stack, hook, args, capsys, prefetch=prefetch)

    # 6: respirator for aerosol-generating procedures on a suspected patient.
    assert "respirator" in topics("order-select", "mk-suspected-outpatient", "--order", INTUBATION)
    # 3 and 8: an m-kopper test ordered: sampling by agreement, and notify at once.
    ordered = topics("order-sign", "mk-suspected-outpatient", "--order", MPOX_PCR)
    assert {"sampling-by-agreement", "notify-municipal-doctor"} <= set(ordered)
    # 9: contact tracing for a confirmed case only.
    assert "contact-tracing" in topics("encounter-discharge", "mk-confirmed-inpatient")
    suspected = topics("encounter-discharge", "mk-suspected-outpatient")
    assert "contact-tracing" not in suspected and "infectious-period" in suspected
    # 8: recording suspected m-kopper on the control patient's problem list: notify.
    new_problem = topics(
        "problem-list-item-create",
        "mk-control",
        "--condition",
        MPOX,
        "--verification",
        "provisional",
    )
    assert "notify-municipal-doctor" in new_problem
    # Nothing for the control patient when nothing about m-kopper is recorded or ordered.
    assert topics("order-select", "mk-control", "--order", INTUBATION) == []


def test_cards_are_printed_readably(stack: Stack, capsys: Any) -> None:
    args = [
        "call",
        "patient-view",
        *hook_args("patient-view", "mk-confirmed-inpatient"),
        "--fhir-server",
        stack.fhir,
        "--service",
        stack.service,
    ]
    code, raw, err = run_command([*args, "--json"], capsys)
    assert code == 0, err
    cards = json.loads(raw)["cards"]
    code, out, err = run_command(args, capsys)
    assert code == 0, err
    assert f"mkopper-patient-view (patient-view): {len(cards)} card" in out
    text = " ".join(out.replace("│", " ").split())  # the panels' borders and line breaks out
    for card in cards:
        assert card["indicator"].upper() in out
        assert card["summary"] in text
        for link in card.get("links", []):
            assert link["url"] in text.replace(" ", "")
