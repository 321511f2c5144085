"""`mkopper-cds contract-doc`: the data contract page, generated from the FHIR package.

An EHR vendor reads ``docs/data-contract.md`` to learn which FHIR data makes the service fire
and what it writes back; FHIR tools read the same facts from ``fhir_profiles/``. Generating the
page from the package keeps the two from drifting apart (a test fails when the page is stale).

The page is deterministic: no dates or paths of the machine that wrote it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

Resource = dict[str, Any]

DEFAULT_OUTPUT = Path("docs") / "data-contract.md"


def package_dir() -> Path:
    return Path(str(resources.files("fhir_profiles")))


@dataclass(frozen=True, slots=True)
class Package:
    """The parts of the FHIR package the page shows, read once."""

    manifest: Resource
    profiles: list[Resource]
    valuesets: dict[str, Resource]
    codesystems: list[Resource]
    patients_index: Resource
    patient_bundles: dict[str, Resource]


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_package(directory: Path | None = None) -> Package:
    root = directory or package_dir()
    valuesets: dict[str, Resource] = {}
    for path in sorted((root / "valuesets").glob("ValueSet-*.json")):
        valueset = _read(path)
        valuesets[valueset["url"]] = valueset
    index = _read(root / "patients" / "index.json")
    bundles = {entry["id"]: _read(root / "patients" / entry["file"]) for entry in index["patients"]}
    return Package(
        manifest=_read(root / "package.json"),
        profiles=[_read(p) for p in sorted(root.glob("StructureDefinition-*.json"))],
        valuesets=valuesets,
        codesystems=[_read(p) for p in sorted(root.glob("CodeSystem-*.json"))],
        patients_index=index,
        patient_bundles=bundles,
    )


# --- which profile applies to a resource ---------------------------------------------------


def required_bindings(profile: Resource) -> list[tuple[str, str]]:
    """(element name under the resource, ValueSet URL) of each required binding."""
    found = []
    for element in profile.get("differential", {}).get("element", []):
        binding = element.get("binding") or {}
        path = element.get("path", "")
        if binding.get("strength") == "required" and path.count(".") == 1:
            found.append((path.split(".", 1)[1], binding["valueSet"]))
    return found


def _codings(value: Any) -> list[Resource]:
    if isinstance(value, dict):
        if "coding" in value:
            return [c for c in value.get("coding") or [] if isinstance(c, dict)]
        if "code" in value:
            return [value]
    return []


def valueset_contains(valueset: Resource, coding: Resource) -> bool:
    for include in valueset.get("compose", {}).get("include", []):
        if include.get("system") != coding.get("system"):
            continue
        if any(concept.get("code") == coding.get("code") for concept in include.get("concept", [])):
            return True
    return False


def profile_applies(
    profile: Resource, resource: Resource, valuesets: Mapping[str, Resource]
) -> bool:
    """Whether the profile speaks about this resource.

    A resource falls under a profile when it has the profile's type and, where the profile
    binds an element to a required ValueSet of the package, that element carries a coding from
    it. So every Encounter falls under the Encounter profile, but only a Condition coded as
    m-kopper falls under the Condition profile.
    """
    if resource.get("resourceType") != profile.get("type"):
        return False
    for element, url in required_bindings(profile):
        valueset = valuesets.get(url)
        if valueset is None:
            continue
        if not any(valueset_contains(valueset, c) for c in _codings(resource.get(element))):
            return False
    return True


def patient_resources(package: Package) -> Iterable[tuple[str, Resource]]:
    for patient_id, bundle in package.patient_bundles.items():
        for entry in bundle.get("entry", []):
            yield patient_id, entry["resource"]


EXAMPLE_PATIENT = "mk-suspected-outpatient"


def written_resources(package: Package) -> list[Resource]:
    """What the service writes in its suggestions, as it would for the example patient."""
    from cds_hooks.cards import RenderContext, notification_record
    from cds_hooks.knowledge import load_knowledge

    found = [r for pid, r in patient_resources(package) if pid == EXAMPLE_PATIENT]
    encounter = next(r["id"] for r in found if r["resourceType"] == "Encounter")
    evidence = [f"{r['resourceType']}/{r['id']}" for r in found if r["resourceType"] == "Condition"]
    context = RenderContext(patient_id=EXAMPLE_PATIENT, encounter_id=encounter)
    return [notification_record(load_knowledge(), context, evidence, "nb")]


def example_of(profile: Resource, package: Package) -> tuple[str, Resource] | None:
    """A synthetic patient's resource under the profile, or else one the service writes."""
    for patient_id, resource in patient_resources(package):
        if profile_applies(profile, resource, package.valuesets):
            return f"from the synthetic patient `{patient_id}`", resource
    for resource in written_resources(package):
        if profile_applies(profile, resource, package.valuesets):
            return f"as the service suggests it for `{EXAMPLE_PATIENT}`", resource
    return None


# --- rendering ---------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cardinality(element: Resource) -> str:
    if "min" not in element and "max" not in element:
        return ""
    return f"{element.get('min', '')}..{element.get('max', '')}"


def _types(element: Resource) -> str:
    names = []
    for type_ in element.get("type", []):
        targets = [t.rsplit("/", 1)[-1] for t in type_.get("targetProfile", [])]
        names.append(f"{type_['code']}({' | '.join(targets)})" if targets else type_["code"])
    return ", ".join(names)


def _valueset_name(url: str, package: Package) -> str:
    valueset = package.valuesets.get(url)
    return str(valueset.get("title", valueset["name"])) if valueset else url


def render_profile(profile: Resource, package: Package) -> list[str]:
    lines = [
        f"### {profile['title']} ({profile['type']})",
        "",
        f"Canonical URL: `{profile['url']}` (version {profile.get('version', '')}, "
        f"status {profile['status']}), based on "
        f"`{profile['baseDefinition']}`.",
        "",
        profile.get("description", ""),
        "",
        "| Element | Card. | Type | Must support | Binding | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    elements = profile["differential"]["element"]
    for element in elements[1:]:
        binding = element.get("binding")
        bound = (
            f"{binding['strength']}: [{_valueset_name(binding['valueSet'], package)}]"
            f"(#{binding['valueSet'].rsplit('/', 1)[-1]})"
            if binding
            else ""
        )
        required_values = [
            f"{'fixed' if key.startswith('fixed') else 'pattern'} value "
            f"`{json.dumps(value, ensure_ascii=False)}`"
            for key, value in element.items()
            if key.startswith(("fixed", "pattern"))
        ]
        meaning = ". ".join(
            x for x in (element.get("short"), element.get("comment"), *required_values) if x
        )
        lines.append(
            f"| `{element['path']}` | {_cardinality(element)} | {_cell(_types(element))} | "
            f"{'yes' if element.get('mustSupport') else ''} | {bound} | {_cell(meaning)} |"
        )
    constraints = [c for element in elements for c in element.get("constraint", [])]
    if constraints:
        lines += ["", "Rules checked by the validator:", ""]
        lines += [
            f"- **{c['key']}** ({c['severity']}): {c['human']}. FHIRPath: `{c['expression']}`"
            for c in constraints
        ]
    example = example_of(profile, package)
    if example:
        lines += [
            "",
            f"Example ({example[0]}):",
            "",
            "```json",
            json.dumps(example[1], ensure_ascii=False, indent=2),
            "```",
        ]
    return [*lines, ""]


def render_valueset(valueset: Resource) -> list[str]:
    anchor = valueset["url"].rsplit("/", 1)[-1]
    lines = [
        f'### <a id="{anchor}"></a>{valueset.get("title", valueset["name"])}',
        "",
        f"`{valueset['url']}`",
        "",
        valueset.get("description", ""),
        "",
        "| System | Code | Display |",
        "|---|---|---|",
    ]
    for include in valueset.get("compose", {}).get("include", []):
        for concept in include.get("concept", []):
            lines.append(
                f"| `{include['system']}` | `{concept['code']}` | "
                f"{_cell(concept.get('display', ''))} |"
            )
    return [*lines, ""]


def render_codesystem(codesystem: Resource) -> list[str]:
    lines = [
        f"### {codesystem['title']}",
        "",
        f"`{codesystem['url']}`",
        "",
        codesystem.get("description", ""),
        "",
        "| Code | Display (nb) | Display (en) |",
        "|---|---|---|",
    ]
    for concept in codesystem.get("concept", []):
        english = next(
            (d["value"] for d in concept.get("designation", []) if d.get("language") == "en"), ""
        )
        lines.append(f"| `{concept['code']}` | {_cell(concept['display'])} | {_cell(english)} |")
    return [*lines, ""]


def render_patients(package: Package) -> list[str]:
    lines = [
        "| Patient id | Description | Expected cards (patient-view) |",
        "|---|---|---|",
    ]
    for entry in package.patients_index["patients"]:
        cards = ", ".join(f"`{key}`" for key in entry.get("expectedCards", [])) or "none"
        lines.append(f"| `{entry['id']}` | {_cell(entry['description'])} | {cards} |")
    return [*lines, ""]


def render_hook_data() -> list[str]:
    """What each service asks for in prefetch, and what the hook context must carry."""
    from cds_hooks.catalog import build_registry
    from cds_hooks.knowledge import load_knowledge

    knowledge = load_knowledge()
    matching = knowledge.content.matching
    category = f"{knowledge.codesystem_url('card-topic')}|notify-municipal-doctor"
    lines = [
        "## Prefetch and hook context",
        "",
        "Each service's prefetch templates (discovery lists the same). A key the EHR does not "
        "send is fetched from `fhirServer`; `conditions` and `observations` are required where "
        "the answer depends on the m-kopper status (412 without them), the others are optional.",
        "",
        "- `aerosolOrders`, `testOrders`: active ServiceRequests for an aerosol-generating "
        "procedure, and for an m-kopper test (the chart view shows sampling while it is ordered).",
        "- `aerosolProcedures`: Procedures with the aerosol-generating codes. One in preparation "
        "or in progress calls for the respirator card; one completed or stopped does when it "
        "ended (`performedPeriod.end`, else `performedDateTime`) at most "
        f"{matching.aerosol_procedure_recent_hours} hours before the call "
        "(`matching.aerosol_procedure_recent_hours` in the content file).",
        "- `notifications`: completed Communications with the category "
        f"`{category}`, the marker the notification card's suggestion writes. One sent at most "
        f"{matching.notification_lookback_days} days before the call "
        "(`matching.notification_lookback_days`) means kommunelegen was notified: no "
        "notification card.",
        "- order-select: `context.selections` (required) lists references such as "
        "`ServiceRequest/123` to resources in `context.draftOrders`. The respirator, sampling "
        "and notification cards follow the selected orders only, so selecting another order "
        "beside a drafted bronchoscopy shows no respirator card again; the m-kopper status "
        "reads every draft order. order-sign reads every draft order.",
        "",
        "| Service | Hook | Prefetch key | Template |",
        "|---|---|---|---|",
    ]
    for service in build_registry(knowledge):
        for key, template in service.prefetch.items():
            lines.append(f"| `{service.id}` | `{service.hook}` | `{key}` | `{_cell(template)}` |")
    return [*lines, ""]


def render(package: Package | None = None) -> str:
    """The whole contract page as Markdown."""
    package = package or load_package()
    manifest = package.manifest
    lines = [
        "# Data contract: the FHIR data the m-kopper service reads and writes",
        "",
        "<!-- Generated by `mkopper-cds contract-doc` from fhir_profiles/. Do not edit. -->",
        "",
        f"FHIR package `{manifest['name']}` version {manifest['version']} "
        f"(FHIR {', '.join(manifest['fhirVersions'])}), canonical base "
        f"`{manifest['canonical']}`. The folder `fhir_profiles/` is the package: FHIR tools "
        "can load it as it is (`package.json`, `.index.json`).",
        "",
        manifest.get("description", ""),
        "",
        "A resource falls under a profile when it has the profile's type and, where the profile "
        "binds a code to a required ValueSet, carries a coding from it: every Encounter falls "
        "under the Encounter profile, a Condition only when it is coded as m-kopper. Data "
        "outside the profiles is still read where the guideline allows (text-only records, "
        "local codes), but only data that conforms is certain to be understood.",
        "",
        "## Profiles",
        "",
    ]
    for profile in package.profiles:
        lines += render_profile(profile, package)
    lines += render_hook_data()
    lines += ["## ValueSets", ""]
    for url in sorted(package.valuesets):
        lines += render_valueset(package.valuesets[url])
    lines += ["## Code systems of our own", ""]
    for codesystem in package.codesystems:
        lines += render_codesystem(codesystem)
    lines += ["## Synthetic patients", ""]
    lines += render_patients(package)
    return "\n".join(lines).rstrip("\n") + "\n"


# --- command line ------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "contract-doc", help="write the data contract page (Markdown) from the FHIR package"
    )
    parser.add_argument(
        "--output",
        default=str(DEFAULT_OUTPUT),
        help=f"file to write, '-' for standard output (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the file is stale"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    output = Path(args.output)
    current = output.read_text(encoding="utf-8") if output.exists() else None
    if args.check:
        if current != text:
            print(f"{output} is stale: run mkopper-cds contract-doc", file=sys.stderr)
            return 1
        return 0
    if current != text:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugin.cli.contract_doc")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["contract-doc", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
