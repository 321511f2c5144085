"""The infection-control team's feedback dashboard (``views``) and the report it shows
(``report``): counts of cards shown, accepted and overridden, never patient data."""

from plugin.admin.views import init_app

__all__ = ["init_app"]
