"""Every setting is in the README's settings table, and the table names no unknown setting."""

from __future__ import annotations

import re

from plugin.config import SETTINGS
from tests.support.paths import ROOT

README = ROOT / "README.md"


def documented() -> set[str]:
    rows = re.findall(r"^\|\s*`(CDS_[A-Z0-9_]+)`\s*\|", README.read_text(encoding="utf-8"), re.M)
    return set(rows)


def test_every_setting_is_documented() -> None:
    missing = {s.name for s in SETTINGS} - documented()
    assert missing == set()


def test_readme_documents_no_unknown_setting() -> None:
    unknown = documented() - {s.name for s in SETTINGS}
    assert unknown == set()


def test_settings_have_help() -> None:
    assert all(s.help.strip() for s in SETTINGS)
