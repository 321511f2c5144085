"""Where things are in the checkout, for tests that read files."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
PATIENTS = ROOT / "fhir_profiles" / "patients"
