"""The one version source: pyproject reads it (dynamic version), `mkopper-cds --version`
prints it and every response carries it in a header (plugin/api/headers.py)."""

from __future__ import annotations

__version__ = "0.2.0"
# The CDS Hooks release this service implements; advertised on every response.
CDS_HOOKS_VERSION = "2.0.1"
