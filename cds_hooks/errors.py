"""The service's exceptions, each carrying the HTTP status it maps to.

One tree, converted once at the boundary where lower-level errors arise
(``raise FhirUnavailable(...) from exc``) and turned into one JSON shape by a
single handler in ``plugin``::

    CdsError (500 internal-error)
    ├── InvalidRequest (400 invalid-request)      body not JSON, or fails validation
    ├── Unauthorized (401 unauthorized)           caller's JWT missing or not trusted
    ├── Forbidden (403 forbidden)                 caller known but not allowed here
    ├── NotFound (404 not-found)
    │   └── UnknownService (404 unknown-service)
    ├── MethodNotAllowed (405 method-not-allowed)
    ├── DataUnavailable (412 prefetch-unavailable) FHIR data the service needs cannot be had
    ├── PayloadTooLarge (413 payload-too-large)
    ├── UnsupportedMediaType (415 unsupported-media-type)
    ├── FhirError (502 fhir-error)                 the FHIR server failed (client boundary)
    │   ├── FhirUnavailable (502 fhir-unavailable)  connection refused, timeout, 5xx
    │   ├── FhirAuthError (502 fhir-auth)           401/403 from the FHIR server
    │   └── FhirNotAllowed (403 fhir-server-not-allowed)  fhirServer not on the allowlist
    └── ContentError (500 content-invalid)          the guideline content file is broken

Messages never carry a token, a patient identifier or resource content: they
name the field path, the prefetch key or the setting, never the value.
"""

from __future__ import annotations

from typing import Any


class CdsError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    code: str = "internal-error"
    default_message = "The service could not handle the request."

    def __init__(self, message: str | None = None, *, details: list[dict[str, Any]] | None = None):
        self.message = message or self.default_message
        self.details = details or []
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        """The one error shape used for every error response."""
        body: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class InvalidRequest(CdsError):
    status = 400
    code = "invalid-request"
    default_message = "The request is not valid."


class Unauthorized(CdsError):
    status = 401
    code = "unauthorized"
    default_message = "The request is not authorised."


class Forbidden(CdsError):
    status = 403
    code = "forbidden"
    default_message = "The request is not allowed."


class NotFound(CdsError):
    status = 404
    code = "not-found"
    default_message = "No such resource."


class UnknownService(NotFound):
    code = "unknown-service"
    default_message = "No CDS service with that id."


class MethodNotAllowed(CdsError):
    status = 405
    code = "method-not-allowed"
    default_message = "The method is not allowed on this URL."


class DataUnavailable(CdsError):
    """The spec's 412: data the service needs could not be had by prefetch or fetch."""

    status = 412
    code = "prefetch-unavailable"
    default_message = "FHIR data the service needs is not available."


class PayloadTooLarge(CdsError):
    status = 413
    code = "payload-too-large"
    default_message = "The request body is too large."


class UnsupportedMediaType(CdsError):
    status = 415
    code = "unsupported-media-type"
    default_message = "The request body must be application/json."


class FhirError(CdsError):
    status = 502
    code = "fhir-error"
    default_message = "The FHIR server returned an error."


class FhirUnavailable(FhirError):
    code = "fhir-unavailable"
    default_message = "The FHIR server could not be reached in time."


class FhirAuthError(FhirError):
    code = "fhir-auth"
    default_message = "The FHIR server refused the access token."


class FhirNotAllowed(FhirError):
    status = 403
    code = "fhir-server-not-allowed"
    default_message = "The fhirServer is not on this service's allowlist."


class ContentError(CdsError):
    """The guideline content (TOML) or a ValueSet is broken; names file and key."""

    code = "content-invalid"
    default_message = "The guideline content is not valid."


class StorageError(CdsError):
    status = 503
    code = "storage-unavailable"
    default_message = "The service's database is not available."
