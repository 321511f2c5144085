"""Write the synthetic patients in fhir_profiles/patients/ as FHIR R4 transaction Bundles.

Deterministic: the same script always writes the same bytes, so the committed JSON can be
checked for staleness (tests/test_patients.py) and loading a Bundle twice changes nothing
(every entry is a PUT to a fixed id).

Clinical codes come only from the verified tables of the project's terminology notes; the
"unrelated" history of the large record is therefore text-only (no invented codes).

    python tools/generate_patients.py           # rewrite the files
    python tools/generate_patients.py --check   # exit 1 when a file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PATIENTS_DIR = Path(__file__).resolve().parent.parent / "fhir_profiles" / "patients"

FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OMSORGSNIVA = "urn:oid:2.16.578.1.12.4.1.1.8406"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

Resource = dict[str, Any]

# --- codes (each row is in the verified tables of TERMINOLOGY.md) -------------------------

MPOX_SNOMED = {"system": SNOMED, "code": "359814004", "display": "Mpox (disorder)"}
MPOX_ICD10 = {"system": ICD10, "code": "B04", "display": "Monkeypox"}
PCR_MAIN = {
    "system": LOINC,
    "code": "100383-9",
    "display": "Monkeypox virus DNA [Presence] in Specimen by NAA with probe detection",
}
PCR_CLADE_II = {
    "system": LOINC,
    "code": "100888-7",
    "display": "Monkeypox virus clade II DNA [Presence] in Specimen by NAA with probe detection",
}
DETECTED = {"system": SNOMED, "code": "260373001", "display": "Detected"}
POSITIVE = {"system": SNOMED, "code": "10828004", "display": "Positive"}
NOT_DETECTED = {"system": SNOMED, "code": "260415000", "display": "Not detected"}
POS = {"system": INTERPRETATION, "code": "POS", "display": "Positive"}
NEG = {"system": INTERPRETATION, "code": "NEG", "display": "Negative"}
INTUBATION = {
    "system": SNOMED,
    "code": "112798008",
    "display": "Insertion of endotracheal tube (procedure)",
}
BRONCHOSCOPY = {"system": SNOMED, "code": "10847001", "display": "Bronchoscopy (procedure)"}

ENCOUNTER_CLASS = {
    "AMB": "ambulatory",
    "EMER": "emergency",
    "IMP": "inpatient encounter",
}
OMSORGSNIVA_DISPLAY = {"1": "Døgnopphold", "2": "Dagbehandling", "3": "Poliklinisk"}


# --- fødselsnummer-shaped identifiers that fail the mod-11 check ----------------------------

_K1_WEIGHTS = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_K2_WEIGHTS = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def _check_digit(digits: str, weights: tuple[int, ...]) -> int:
    rest = 11 - sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    return 0 if rest == 11 else rest


def synthetic_fnr(birth_date: str, individual: int) -> str:
    """An 11-digit number shaped like a fødselsnummer whose second check digit is wrong.

    Every real fødselsnummer passes both mod-11 checks, so a number that fails the second
    cannot have been issued to anyone.
    """
    year, month, day = birth_date.split("-")
    base = f"{day}{month}{year[2:]}{individual:03d}"
    k1 = _check_digit(base, _K1_WEIGHTS)
    if k1 == 10:  # no valid number has this prefix; any digit keeps it invalid
        k1 = 0
    k2 = _check_digit(base + str(k1), _K2_WEIGHTS)
    wrong_k2 = (k2 + 1) % 10 if k2 != 10 else 0
    return f"{base}{k1}{wrong_k2}"


# --- resource builders -------------------------------------------------------------------


def patient(pid: str, given: str, family: str, gender: str, birth: str, indiv: int) -> Resource:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {"use": "official", "system": FNR_SYSTEM, "value": synthetic_fnr(birth, indiv)}
        ],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
    }


def encounter(
    eid: str,
    pid: str,
    act_class: str,
    start: str,
    *,
    status: str = "in-progress",
    end: str | None = None,
    omsorgsniva: str | None = None,
) -> Resource:
    period: dict[str, str] = {"start": start}
    if end:
        period["end"] = end
    resource: Resource = {
        "resourceType": "Encounter",
        "id": eid,
        "status": status,
        "class": {"system": ACT_CODE, "code": act_class, "display": ENCOUNTER_CLASS[act_class]},
    }
    if omsorgsniva:
        resource["type"] = [
            {
                "coding": [
                    {
                        "system": OMSORGSNIVA,
                        "code": omsorgsniva,
                        "display": OMSORGSNIVA_DISPLAY[omsorgsniva],
                    }
                ]
            }
        ]
    resource["subject"] = {"reference": f"Patient/{pid}"}
    resource["period"] = period
    return resource


def condition(
    cid: str,
    pid: str,
    *,
    codings: Iterable[dict[str, str]] = (),
    text: str,
    verification: str | None,
    clinical: str = "active",
    eid: str | None = None,
    onset: str,
    abatement: str | None = None,
    category: str = "encounter-diagnosis",
) -> Resource:
    resource: Resource = {"resourceType": "Condition", "id": cid}
    resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    if verification:
        resource["verificationStatus"] = {
            "coding": [{"system": VERIFICATION, "code": verification}]
        }
    resource["category"] = [{"coding": [{"system": CONDITION_CATEGORY, "code": category}]}]
    code: dict[str, Any] = {}
    if codings:
        code["coding"] = list(codings)
    code["text"] = text
    resource["code"] = code
    resource["subject"] = {"reference": f"Patient/{pid}"}
    if eid:
        resource["encounter"] = {"reference": f"Encounter/{eid}"}
    resource["onsetDateTime"] = onset
    if abatement:
        resource["abatementDateTime"] = abatement
    resource["recordedDate"] = onset
    return resource


def lab_observation(
    oid: str,
    pid: str,
    eid: str | None,
    code: dict[str, str],
    value: dict[str, str],
    interpretation: dict[str, str],
    when: str,
) -> Resource:
    resource: Resource = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [code]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    if eid:
        resource["encounter"] = {"reference": f"Encounter/{eid}"}
    resource["effectiveDateTime"] = when
    resource["valueCodeableConcept"] = {"coding": [value]}
    resource["interpretation"] = [{"coding": [interpretation]}]
    return resource


def service_request(
    sid: str, pid: str, eid: str, code: dict[str, str], when: str, status: str = "active"
) -> Resource:
    return {
        "resourceType": "ServiceRequest",
        "id": sid,
        "status": status,
        "intent": "order",
        "code": {"coding": [code]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{eid}"},
        "authoredOn": when,
    }


def transaction(resources: list[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": resource,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
            }
            for resource in resources
        ],
    }


# --- the patients ------------------------------------------------------------------------


def suspected_outpatient() -> list[Resource]:
    pid, eid = "mk-suspected-outpatient", "mk-suspected-outpatient-enc"
    return [
        patient(pid, "Kari", "Nordmann", "female", "1988-04-12", 412),
        encounter(eid, pid, "AMB", "2025-06-02T09:15:00+02:00", omsorgsniva="3"),
        condition(
            f"{pid}-mpox",
            pid,
            codings=[MPOX_SNOMED],
            text="Mistenkt m-kopper",
            verification="provisional",
            eid=eid,
            onset="2025-06-02T09:40:00+02:00",
        ),
    ]


def suspected_emergency_respiratory() -> list[Resource]:
    pid, eid = "mk-suspected-emergency-respiratory", "mk-suspected-emergency-respiratory-enc"
    return [
        patient(pid, "Ola", "Nordmann", "male", "1979-11-03", 517),
        encounter(eid, pid, "EMER", "2025-06-03T22:05:00+02:00"),
        condition(
            f"{pid}-mpox",
            pid,
            codings=[MPOX_ICD10],
            text="Mistenkt m-kopper",
            verification="unconfirmed",
            eid=eid,
            onset="2025-06-03T22:30:00+02:00",
        ),
        # No verified code exists for the symptoms: text only, as Norwegian records often are.
        condition(
            f"{pid}-respiratory",
            pid,
            text="Hoste og tungpust",
            verification="confirmed",
            eid=eid,
            onset="2025-06-01",
            category="problem-list-item",
        ),
    ]


def confirmed_inpatient() -> list[Resource]:
    pid, eid = "mk-confirmed-inpatient", "mk-confirmed-inpatient-enc"
    return [
        patient(pid, "Ingrid", "Haugen", "female", "1995-02-27", 284),
        encounter(eid, pid, "IMP", "2025-06-04T14:00:00+02:00", omsorgsniva="1"),
        condition(
            f"{pid}-mpox",
            pid,
            codings=[MPOX_SNOMED, MPOX_ICD10],
            text="M-kopper",
            verification="confirmed",
            eid=eid,
            onset="2025-06-04T16:20:00+02:00",
        ),
        lab_observation(
            f"{pid}-pcr",
            pid,
            eid,
            PCR_MAIN,
            DETECTED,
            POS,
            "2025-06-05T08:00:00+02:00",
        ),
    ]


def confirmed_lab_only() -> list[Resource]:
    pid, eid = "mk-confirmed-lab-only", "mk-confirmed-lab-only-enc"
    return [
        patient(pid, "Jonas", "Berg", "male", "1991-08-19", 633),
        encounter(eid, pid, "AMB", "2025-06-06T10:30:00+02:00"),
        lab_observation(
            f"{pid}-pcr",
            pid,
            eid,
            PCR_CLADE_II,
            POSITIVE,
            POS,
            "2025-06-06T12:45:00+02:00",
        ),
    ]


def refuted() -> list[Resource]:
    pid, eid = "mk-refuted", "mk-refuted-enc"
    return [
        patient(pid, "Sigrid", "Dahl", "female", "1983-05-30", 742),
        encounter(eid, pid, "AMB", "2025-06-09T08:50:00+02:00"),
        condition(
            f"{pid}-mpox",
            pid,
            codings=[MPOX_ICD10],
            text="M-kopper, avkreftet",
            verification="refuted",
            clinical="inactive",
            eid=eid,
            onset="2025-06-02",
        ),
        lab_observation(
            f"{pid}-pcr",
            pid,
            eid,
            PCR_MAIN,
            NOT_DETECTED,
            NEG,
            "2025-06-03T11:00:00+02:00",
        ),
    ]


def resolved() -> list[Resource]:
    pid, eid = "mk-resolved", "mk-resolved-enc"
    return [
        patient(pid, "Magnus", "Lie", "male", "1986-09-14", 158),
        encounter(eid, pid, "AMB", "2025-06-10T13:10:00+02:00"),
        condition(
            f"{pid}-mpox",
            pid,
            codings=[MPOX_SNOMED],
            text="M-kopper, tilhelet",
            verification="confirmed",
            clinical="resolved",
            onset="2024-09-01",
            abatement="2024-10-05",
        ),
    ]


def text_only() -> list[Resource]:
    pid, eid = "mk-text-only", "mk-text-only-enc"
    return [
        patient(pid, "Nora", "Solberg", "female", "1999-12-08", 369),
        encounter(eid, pid, "AMB", "2025-06-11T11:00:00+02:00"),
        condition(
            f"{pid}-mpox",
            pid,
            text="Mistenkt apekopper",
            verification="provisional",
            eid=eid,
            onset="2025-06-11T11:20:00+02:00",
        ),
    ]


def control() -> list[Resource]:
    pid, eid = "mk-control", "mk-control-enc"
    return [
        patient(pid, "Åse", "Ødegård", "female", "1972-03-21", 826),
        encounter(eid, pid, "IMP", "2025-06-12T07:30:00+02:00", omsorgsniva="1"),
        # Chickenpox in childhood: the word "kopper" alone must not read as m-kopper.
        condition(
            f"{pid}-vannkopper",
            pid,
            text="Vannkopper",
            verification="confirmed",
            clinical="resolved",
            onset="1978-05-10",
            abatement="1978-05-24",
            category="problem-list-item",
        ),
        condition(
            f"{pid}-astma",
            pid,
            text="Astma",
            verification="confirmed",
            onset="2001-01-15",
            category="problem-list-item",
        ),
        # An aerosol-generating procedure without m-kopper: no card.
        service_request(f"{pid}-bronkoskopi", pid, eid, BRONCHOSCOPY, "2025-06-12T09:00:00+02:00"),
    ]


def inpatient_aerosol() -> list[Resource]:
    pid, eid = "mk-inpatient-aerosol", "mk-inpatient-aerosol-enc"
    return [
        patient(pid, "Bjørn", "Aasen", "male", "1968-07-02", 905),
        encounter(eid, pid, "IMP", "2025-06-13T18:40:00+02:00", omsorgsniva="1"),
        condition(
            f"{pid}-mpox",
            pid,
            codings=[MPOX_SNOMED],
            text="Mistenkt m-kopper",
            verification="provisional",
            eid=eid,
            onset="2025-06-13T19:00:00+02:00",
        ),
        service_request(f"{pid}-intubasjon", pid, eid, INTUBATION, "2025-06-14T02:10:00+02:00"),
    ]


# The large record: about 1,000 Conditions, 500 Encounters and 200 Observations, nearly all
# unrelated, to measure fact extraction and prefetch paging on a long history.
LARGE_CONDITION_TEXTS = (
    "Hypertensjon",
    "Diabetes mellitus type 2",
    "Astma",
    "Kronisk obstruktiv lungesykdom",
    "Atrieflimmer",
    "Hjertesvikt",
    "Hypotyreose",
    "Depresjon",
    "Artrose i kne",
    "Lumbago",
    "Migrene",
    "Urinveisinfeksjon",
    "Pneumoni",
    "Gastroøsofageal refluks",
    "Anemi",
    "Psoriasis",
    "Eksem",
    "Søvnapné",
    "Osteoporose",
    "Vannkopper",
)
LARGE_LAB_TESTS = (
    ("Hemoglobin", "g/dL", 11.0, 0.3),
    ("CRP", "mg/L", 1.0, 7.0),
    ("Leukocytter", "10*9/L", 4.0, 0.5),
    ("Kreatinin", "umol/L", 60.0, 4.0),
)
LARGE_CLINICAL = ("active", "resolved", "inactive", "resolved", "active")


def _date(serial: int) -> str:
    """A date between 2005 and 2024 from a serial number (no calendar library needed)."""
    year = 2005 + serial % 20
    month = 1 + (serial * 7) % 12
    day = 1 + (serial * 13) % 28
    return f"{year:04d}-{month:02d}-{day:02d}"


def large_record() -> list[Resource]:
    pid = "mk-large-record"
    current = f"{pid}-enc-current"
    resources: list[Resource] = [patient(pid, "Per", "Johansen", "male", "1950-10-10", 271)]
    for n in range(499):
        day = _date(n)
        resources.append(
            encounter(
                f"{pid}-enc-{n:03d}",
                pid,
                "IMP" if n % 10 == 0 else "AMB",
                f"{day}T08:00:00+01:00",
                status="finished",
                end=f"{day}T15:00:00+01:00",
            )
        )
    resources.append(encounter(current, pid, "IMP", "2025-06-15T10:00:00+02:00"))
    for n in range(999):
        onset = _date(n * 3 + 1)
        clinical = LARGE_CLINICAL[n % len(LARGE_CLINICAL)]
        resources.append(
            condition(
                f"{pid}-cond-{n:04d}",
                pid,
                text=LARGE_CONDITION_TEXTS[n % len(LARGE_CONDITION_TEXTS)],
                verification="confirmed",
                clinical=clinical,
                eid=f"{pid}-enc-{n % 499:03d}",
                onset=onset,
                abatement=onset if clinical == "resolved" else None,
            )
        )
    # The one relevant item, last in the list where a linear scan finds it last.
    resources.append(
        condition(
            f"{pid}-mpox",
            pid,
            codings=[MPOX_SNOMED],
            text="Mistenkt m-kopper",
            verification="provisional",
            eid=current,
            onset="2025-06-15T11:00:00+02:00",
        )
    )
    for n in range(200):
        name, unit, low, step = LARGE_LAB_TESTS[n % len(LARGE_LAB_TESTS)]
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-obs-{n:03d}",
                "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
                "code": {"text": name},
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{pid}-enc-{(n * 2) % 499:03d}"},
                "effectiveDateTime": f"{_date(n * 2)}T09:00:00+01:00",
                "valueQuantity": {
                    "value": round(low + step * (n % 9), 1),
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            }
        )
    return resources


# id -> (builder, description, expected facts: m-kopper status and care setting).
PATIENTS = {
    "mk-suspected-outpatient": (
        suspected_outpatient,
        "Suspected m-kopper (SNOMED CT, provisional) at an outpatient visit (AMB).",
        {"status": "suspected", "careSetting": "outpatient"},
    ),
    "mk-suspected-emergency-respiratory": (
        suspected_emergency_respiratory,
        "Suspected m-kopper (ICD-10 B04, unconfirmed) in the emergency department (EMER), "
        "with cough and shortness of breath recorded as text (no verified code exists for "
        "them, so the service does not read them).",
        {"status": "suspected", "careSetting": "emergency"},
    ),
    "mk-confirmed-inpatient": (
        confirmed_inpatient,
        "Confirmed m-kopper, inpatient (IMP), with a positive PCR.",
        {"status": "confirmed", "careSetting": "inpatient"},
    ),
    "mk-confirmed-lab-only": (
        confirmed_lab_only,
        "Positive clade II PCR at an outpatient visit and no Condition: confirmed by the "
        "laboratory alone.",
        {"status": "confirmed", "careSetting": "outpatient"},
    ),
    "mk-refuted": (
        refuted,
        "M-kopper refuted (verificationStatus refuted) with a negative PCR.",
        {"status": "none", "careSetting": "outpatient"},
    ),
    "mk-resolved": (
        resolved,
        "Confirmed m-kopper last year, now resolved (clinicalStatus resolved).",
        {"status": "none", "careSetting": "outpatient"},
    ),
    "mk-text-only": (
        text_only,
        "Suspected m-kopper recorded as text only ('Mistenkt apekopper'), no code.",
        {"status": "suspected", "careSetting": "outpatient"},
    ),
    "mk-control": (
        control,
        "Control: inpatient without m-kopper; old chickenpox ('Vannkopper') and asthma as "
        "text, and a bronchoscopy ordered.",
        {"status": "none", "careSetting": "inpatient", "aerosolProcedures": ["10847001"]},
    ),
    "mk-inpatient-aerosol": (
        inpatient_aerosol,
        "Suspected m-kopper, inpatient, with endotracheal intubation ordered (ServiceRequest).",
        {"status": "suspected", "careSetting": "inpatient", "aerosolProcedures": ["112798008"]},
    ),
    "mk-large-record": (
        large_record,
        "Large record for performance work: 1,000 Conditions, 500 Encounters and 200 "
        "Observations, all unrelated except one suspected m-kopper Condition.",
        {"status": "suspected", "careSetting": "inpatient"},
    ),
}


# id -> finding keys (cds_hooks/content/mkopper.toml) of the cards the service should return
# on patient-view. Patients not listed here expect no card.
# Read from the guideline: 5.1 (droplet precautions in outpatient care) or 5.2 (isolation) by
# care setting, the respirator under 5.2 for an aerosol-generating procedure, and section 7
# (staff in vulnerable groups) whenever m-kopper is suspected or confirmed.
EXPECTED_CARDS: dict[str, list[str]] = {
    # At most three cards, the most urgent first: the duty to notify, the regime for the
    # setting (staff in vulnerable groups folded into it under the cap), then contact tracing
    # for a confirmed case (with the infectious period folded in) or the infectious period.
    "mk-suspected-outpatient": [
        "notify-municipal-doctor",
        "droplet-precautions-outpatient",
        "infectious-period",
    ],
    "mk-suspected-emergency-respiratory": [
        "notify-municipal-doctor",
        "droplet-precautions-outpatient",
        "infectious-period",
    ],
    "mk-confirmed-inpatient": ["notify-municipal-doctor", "isolation-inpatient", "contact-tracing"],
    "mk-confirmed-lab-only": [
        "notify-municipal-doctor",
        "droplet-precautions-outpatient",
        "contact-tracing",
    ],
    "mk-text-only": [
        "notify-municipal-doctor",
        "droplet-precautions-outpatient",
        "infectious-period",
    ],
    "mk-inpatient-aerosol": ["notify-municipal-doctor", "isolation-inpatient", "respirator"],
    "mk-large-record": ["notify-municipal-doctor", "isolation-inpatient", "infectious-period"],
}


def render(data: Any, *, compact: bool = False) -> str:
    if compact:  # the large record: one line per entry keeps the file small and diffable
        entries = ",\n".join(
            json.dumps(entry, ensure_ascii=False, separators=(",", ":")) for entry in data["entry"]
        )
        return '{"resourceType":"Bundle","type":"transaction","entry":[\n' + entries + "\n]}\n"
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def current_encounter(resources: list[Resource]) -> str:
    (current,) = [
        r["id"]
        for r in resources
        if r["resourceType"] == "Encounter" and r["status"] == "in-progress"
    ]
    return str(current)


def index() -> dict[str, Any]:
    return {
        "description": "Synthetic patients (FHIR R4 transaction Bundles, PUT to fixed ids). "
        "Generated by tools/generate_patients.py; see README.md.",
        "patients": [
            {
                "id": pid,
                "file": f"{pid}.json",
                "description": description,
                # The encounter going on now: context.encounterId for encounter hooks.
                "encounterId": current_encounter(build()),
                "expected": expected,
                "expectedCards": EXPECTED_CARDS.get(pid, []),
            }
            for pid, (build, description, expected) in PATIENTS.items()
        ],
    }


def files() -> dict[str, str]:
    """File name -> exact file text, for every patient Bundle and the index."""
    out = {
        f"{pid}.json": render(transaction(build()), compact=pid == "mk-large-record")
        for pid, (build, _, _) in PATIENTS.items()
    }
    out["index.json"] = render(index())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in files().items():
        path = PATIENTS_DIR / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("stale: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
