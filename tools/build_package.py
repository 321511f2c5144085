"""Keep fhir_profiles/ a FHIR package in step with the guideline content.

The profiles are hand-written differentials; what follows from the content file is generated:

- the package version (and each profile's ``version`` and ``date``), from the guideline's
  ``last_changed`` date, so the package moves with the guideline text;
- the CodeSystems of our own codes: card topics (the finding keys) and override reasons;
- ``package.json`` (FHIR NPM package format) and ``.index.json`` (the package file index).

    python tools/build_package.py           # rewrite what is stale
    python tools/build_package.py --check   # exit 1 when a file is stale
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_hooks.knowledge import Content, default_content_path, load_content  # noqa: E402

PACKAGE_DIR = ROOT / "fhir_profiles"
PACKAGE_NAME = "example.mkopper-cds"
FHIR_VERSION = "4.0.1"

# CodeSystem names after {canonical_base}/CodeSystem/ (cds_hooks.knowledge.codesystem_url).
CARD_TOPIC = "card-topic"
OVERRIDE_REASON = "override-reason"

Resource = dict[str, Any]


def package_version(content: Content) -> str:
    """SemVer from the guideline's last change: 2025-03-21 gives 2025.3.21."""
    changed: dt.date = content.guideline.last_changed
    return f"{changed.year}.{changed.month}.{changed.day}"


def _english(text: str) -> list[dict[str, Any]]:
    return [{"language": "en", "value": text}]


def codesystem(
    content: Content, name: str, title: str, description: str, concepts: list[Resource]
) -> Resource:
    base = content.terminology.canonical_base
    return {
        "resourceType": "CodeSystem",
        "id": name,
        # Displays are Norwegian bokmål; English comes as a designation.
        "language": "nb",
        "url": f"{base}/CodeSystem/{name}",
        "version": package_version(content),
        "name": "".join(part.capitalize() for part in name.split("-")),
        "title": title,
        "status": "draft",
        "experimental": False,
        "date": content.guideline.last_changed.isoformat(),
        "description": description,
        "caseSensitive": True,
        "content": "complete",
        "count": len(concepts),
        "concept": concepts,
    }


def card_topics(content: Content) -> Resource:
    concepts = [
        {
            "code": key,
            "display": finding.topic.nb,
            "designation": _english(finding.topic.en),
        }
        for key, finding in content.findings.items()
    ]
    return codesystem(
        content,
        CARD_TOPIC,
        "M-kopper card topics",
        "The kinds of card the m-kopper service shows, one per finding of the guideline "
        "content. Generated from the content file; display in Norwegian bokmål, English as "
        "a designation.",
        concepts,
    )


def override_reasons(content: Content) -> Resource:
    concepts = [
        {
            "code": key,
            "display": reason.display.nb,
            "designation": _english(reason.display.en),
        }
        for key, reason in content.override_reasons.items()
    ]
    return codesystem(
        content,
        OVERRIDE_REASON,
        "M-kopper override reasons",
        "The reasons a clinician can give for overriding an m-kopper card (CDS Hooks "
        "overrideReasons). Generated from the content file; display in Norwegian bokmål, "
        "English as a designation.",
        concepts,
    )


def package_manifest(content: Content) -> Resource:
    return {
        "name": PACKAGE_NAME,
        "version": package_version(content),
        "canonical": content.terminology.canonical_base,
        "title": "M-kopper CDS: data contract",
        "description": "Profiles, ValueSets, CodeSystems and synthetic patients for the "
        "m-kopper (mpox) CDS Hooks service following the guideline of "
        f"{content.guideline.owner} (last changed {content.guideline.version}).",
        "fhirVersions": [FHIR_VERSION],
        "dependencies": {"hl7.fhir.r4.core": FHIR_VERSION},
        "type": "Conformance",
        "license": "Apache-2.0",
        "author": "mkopper-cds",
        "jurisdiction": "urn:iso:std:iso:3166#NO",
    }


def with_version(profile: Resource, content: Content) -> Resource:
    """The hand-written profile with version and date taken from the content."""
    updated = dict(profile)
    updated["version"] = package_version(content)
    updated["date"] = content.guideline.last_changed.isoformat()
    # Keep the key order of a hand-written profile: version after url, date after status.
    order = list(profile)
    for key, after in (("version", "url"), ("date", "status")):
        if key not in order:
            order.insert(order.index(after) + 1, key)
    return {key: updated[key] for key in order}


def index_entry(filename: str, resource: Resource) -> Resource:
    entry: Resource = {"filename": filename, "resourceType": resource["resourceType"]}
    for key in ("id", "url", "version", "kind", "type"):
        if key in resource:
            entry[key] = resource[key]
    return entry


def render(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def expected_files(content: Content | None = None) -> dict[Path, str]:
    """Every generated or version-stamped file of the package, with its exact text."""
    content = content or load_content(default_content_path())
    resources: dict[str, Resource] = {}
    for path in sorted(PACKAGE_DIR.glob("StructureDefinition-*.json")):
        profile = json.loads(path.read_text(encoding="utf-8"))
        resources[path.name] = with_version(profile, content)
    for system in (card_topics(content), override_reasons(content)):
        resources[f"CodeSystem-{system['id']}.json"] = system
    # The ValueSets are maintained by hand in valuesets/; they are listed, not rewritten.
    listed = dict(resources)
    for path in sorted((PACKAGE_DIR / "valuesets").glob("ValueSet-*.json")):
        listed[f"valuesets/{path.name}"] = json.loads(path.read_text(encoding="utf-8"))
    files = {PACKAGE_DIR / name: render(resource) for name, resource in resources.items()}
    files[PACKAGE_DIR / "package.json"] = render(package_manifest(content))
    files[PACKAGE_DIR / ".index.json"] = render(
        {
            "index-version": 2,
            "files": [index_entry(name, resource) for name, resource in sorted(listed.items())],
        }
    )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("stale: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
