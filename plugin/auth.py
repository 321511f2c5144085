"""Caller authentication (interim: development profile only; JWT verification follows)."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from flask import Flask, Request, current_app

from cds_hooks.errors import Unauthorized
from plugin.config import as_bool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    iss: str
    tenant: str | None = None


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def init_app(app: Flask) -> None:
    if as_bool(app.config["CDS_ALLOW_UNSIGNED"]):
        log.warning(
            "CDS_ALLOW_UNSIGNED=1: unsigned calls from loopback are accepted. Development only."
        )


def authenticate(request: Request) -> Caller | None:
    if request.headers.get("Authorization"):
        raise Unauthorized("JWT verification is not configured.")
    if as_bool(current_app.config["CDS_ALLOW_UNSIGNED"]) and _is_loopback(request.remote_addr):
        return None
    raise Unauthorized("A signed JWT is required.")
