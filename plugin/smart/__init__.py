"""The SMART on FHIR page for EHRs without a CDS Hooks client: launch, token exchange and the
page (``views``), its sessions (``sessions``), and its HTML rendering and text (``render``)."""

from plugin.smart.views import init_app

__all__ = ["init_app"]
