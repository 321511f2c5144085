"""FHIR boundary: the one module that names the FHIR release and talks to FHIR servers.

R4 data is validated with fhir.resources' R4B models (R4B is wire-compatible
with R4 for the resources this service reads). Everything else in
``cds_hooks`` works on raw dicts filtered by code first, and asks this module
to validate only the resources that matter.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
import types
import typing
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
from fhir.resources.R4B import get_fhir_model_class
from fhir_core import types as fhir_types
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    create_model,
)
from pydantic_core import core_schema
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, LocationParseError, ReadTimeoutError
from urllib3.util import parse_url

from cds_hooks.errors import FhirAuthError, FhirError, FhirNotAllowed, FhirUnavailable

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

FHIR_RELEASE = "R4"
FHIR_VERSION = "4.0.1"


class InvalidResource(ValueError):
    """A FHIR resource did not validate; carries the resource type and field paths only."""


def parse_resource(data: dict[str, Any], resource_type: str | None = None) -> FHIRAbstractModel:
    """Validate one raw resource as its ``resourceType`` (or the given type)."""
    name = resource_type or data.get("resourceType")
    if not isinstance(name, str):
        raise InvalidResource("resource has no resourceType")
    try:
        model = get_fhir_model_class(name)
    except ValueError as exc:
        raise InvalidResource(f"unknown resourceType {name!r}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        paths = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        raise InvalidResource(f"{name} is not valid FHIR at: {', '.join(paths)[:300]}") from None


# --- The same verdict, cheaper: lean models of the common shapes ---------------------------------
#
# fhir.resources runs two Python validators over every field of every element it builds (about
# 0.2-1 ms for one Condition), and the rules only need the verdict. A lean model is a plain
# pydantic model made from the R4B model: the same field names, the same primitive types (the
# fhir_core annotations R4B itself uses), required where R4B requires, extra fields forbidden,
# but only for the elements listed below. It accepts a subset of what R4B accepts, so when it
# accepts, R4B would too; anything it does not accept (an invalid resource, or a valid one with
# an element not listed here) is judged by the full R4B validation. The verdict is always R4B's;
# only the common case is cheap. tests/cds_hooks/test_fhir_conformance.py checks both on the
# test corpus and on mutations of it.

_LEAN_ELEMENTS: dict[str, frozenset[str]] = {
    "CodeableConcept": frozenset({"id", "coding", "text"}),
    "Coding": frozenset({"id", "system", "version", "code", "display", "userSelected"}),
    "Reference": frozenset({"id", "reference", "type", "display"}),
    "Period": frozenset({"id", "start", "end"}),
    "Quantity": frozenset({"id", "value", "comparator", "unit", "system", "code"}),
    "Meta": frozenset({"id", "versionId", "lastUpdated", "source", "profile"}),
}
_RESOURCE_COMMON = frozenset({"resourceType", "id", "meta", "language"})
_LEAN_RESOURCES: dict[str, frozenset[str]] = {
    "Condition": _RESOURCE_COMMON
    | {
        "clinicalStatus",
        "verificationStatus",
        "category",
        "severity",
        "code",
        "bodySite",
        "subject",
        "encounter",
        "onsetDateTime",
        "onsetPeriod",
        "onsetString",
        "abatementDateTime",
        "abatementPeriod",
        "abatementString",
        "recordedDate",
        "recorder",
        "asserter",
    },
    "Observation": _RESOURCE_COMMON
    | {
        "basedOn",
        "status",
        "category",
        "code",
        "subject",
        "encounter",
        "effectiveDateTime",
        "effectivePeriod",
        "effectiveInstant",
        "issued",
        "performer",
        "valueQuantity",
        "valueCodeableConcept",
        "valueString",
        "interpretation",
        "method",
        "specimen",
    },
    "ServiceRequest": _RESOURCE_COMMON
    | {
        "status",
        "intent",
        "category",
        "priority",
        "code",
        "orderDetail",
        "subject",
        "encounter",
        "occurrenceDateTime",
        "authoredOn",
        "requester",
        "reasonCode",
    },
    "Procedure": _RESOURCE_COMMON
    | {
        "basedOn",
        "partOf",
        "status",
        "statusReason",
        "category",
        "code",
        "subject",
        "encounter",
        "performedDateTime",
        "performedPeriod",
        "performedString",
        "recorder",
        "asserter",
        "location",
        "reasonCode",
        "bodySite",
        "usedCode",
    },
    "Encounter": _RESOURCE_COMMON
    | {
        "status",
        "class",
        "type",
        "serviceType",
        "priority",
        "subject",
        "period",
        "serviceProvider",
    },
}


_LEAN_CACHE: dict[str, type[BaseModel]] = {}
# Per lean resource type, R4B's choice groups (``onset[x]``...) as the names the lean model
# takes: R4B allows one of each, so a resource with two goes to the full validation.
_CHOICE_GROUPS: dict[str, tuple[tuple[str, ...], ...]] = {}


class _NativeTime:
    """A lean dateTime or instant, checked in pydantic-core alone: R4B's own pattern without the
    leap second, then the datetime validator R4B itself calls. What this accepts R4B accepts;
    a leap second, a year and month ("2025-06") or anything else not accepted here is left to
    R4B. fhir_core's Python validator around the two took about half of a lean Condition's
    validation."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.chain_schema(
            [
                core_schema.str_schema(strict=True, pattern=self.pattern),
                core_schema.datetime_schema(),
            ]
        )


def _native_times() -> dict[type, _NativeTime]:
    natives: dict[type, _NativeTime] = {}
    for kind in (fhir_types.DateTime, fhir_types.Instant):
        pattern: str = kind.pattern.pattern
        if pattern.count("|60)") == 1:  # else (another fhir_core) R4B's own validator stays
            natives[kind] = _NativeTime("^(?:" + pattern.replace("|60)", ")") + ")$")
    return natives


_NATIVE_TIMES = _native_times()


def _lean_annotation(annotation: Any) -> Any:
    """R4B's annotation with each FHIR complex type replaced by its lean model, and a dateTime
    or instant by its native check."""
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        return _lean_model(annotation.get_model_klass())
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        for meta in annotation.__metadata__:
            native = _NATIVE_TIMES.get(type(meta))
            if native is not None:
                return typing.Annotated[str, native]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_lean_annotation(arg) for arg in typing.get_args(annotation))]  # noqa: UP007
    if origin in (list, typing.List):  # noqa: UP006
        (item,) = typing.get_args(annotation)
        return list[_lean_annotation(item)]  # type: ignore[misc]  # built at run time
    return annotation  # a primitive: the fhir_core type R4B uses, unchanged


def _without_none(annotation: Any) -> Any:
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _lean_model(r4b: type[FHIRAbstractModel]) -> type[BaseModel]:
    """The lean model of one R4B model (built once)."""
    name = r4b.__resource_type__
    if name in _LEAN_CACHE:
        return _LEAN_CACHE[name]
    allowed = _LEAN_RESOURCES.get(name) or _LEAN_ELEMENTS[name]
    instance = r4b.model_construct()
    # Primitives R4B requires (a value, or an extension saying why there is none): here the
    # value, always.
    required = {field_name for field_name, _ in instance.get_required_fields()}
    fields: dict[str, Any] = {}
    for field_name, info in r4b.model_fields.items():
        alias = info.alias or field_name
        if alias not in allowed:
            continue
        annotation = _lean_annotation(info.annotation)
        if info.is_required() or field_name in required:
            fields[field_name] = (_without_none(annotation), Field(alias=alias))
        else:
            fields[field_name] = (annotation, Field(default=None, alias=alias))
    if name in _LEAN_RESOURCES:
        fields["resourceType"] = (typing.Literal[name], Field())
        _CHOICE_GROUPS[name] = tuple(
            group
            for group in (
                tuple(r4b.model_fields[field].alias or field for field in names if field in fields)
                for names in instance.get_one_of_many_fields().values()
            )
            if len(group) > 1
        )
    model = create_model(f"Lean{name}", __config__=ConfigDict(extra="forbid"), **fields)
    _LEAN_CACHE[name] = model
    return model


def check_resource(data: dict[str, Any], resource_type: str) -> None:
    """Raise ``InvalidResource`` when ``data`` is not valid R4 as ``resource_type``.

    The verdict of :func:`parse_resource`, at a fraction of its cost for the resources of the
    types the rules read (above); other types are validated in full.
    """
    if resource_type in _LEAN_RESOURCES and data.get("resourceType") == resource_type:
        model = _lean_model(get_fhir_model_class(resource_type))
        one_of_each = all(
            sum(name in data for name in group) <= 1 for group in _CHOICE_GROUPS[resource_type]
        )
        try:
            if one_of_each:
                model.model_validate(data)
                return
        except ValidationError:
            pass  # not the common shape, or not valid: R4B decides
    parse_resource(data, resource_type)


# --- Limits, warm-up and the allowlist ---------------------------------------

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
DEFAULT_PORTS = {"http": 80, "https": 443}


# One small resource of each type the rules validate, with the nested types they carry.
_WARM_UP: tuple[dict[str, Any], ...] = (
    {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "0"}], "text": "t"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "provisional"}]},
        "onsetDateTime": "2025-01-01",
        "recordedDate": "2025-01-01",
    },
    {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p"},
        "period": {"start": "2025-01-01T00:00:00Z"},
    },
    {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "0"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2025-01-01T00:00:00Z",
        "valueCodeableConcept": {"coding": [{"code": "0"}]},
        "interpretation": [{"coding": [{"code": "POS"}]}],
    },
    {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "0"}]},
        "subject": {"reference": "Patient/p"},
    },
    {
        "resourceType": "Procedure",
        "status": "in-progress",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "0"}]},
        "subject": {"reference": "Patient/p"},
        "performedPeriod": {"start": "2025-01-01T00:00:00Z"},
        "usedCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "0"}]}],
    },
    {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": "Patient/p"},
        "payload": [{"contentString": "t"}],
    },
)


def warm_up() -> None:
    """Validate one resource of each type once, so the models' validators are built now.

    fhir.resources builds a model's validators on its first use (about 30 ms for a
    Condition); doing it before the server forks spares every worker's first calls.
    """
    for resource in _WARM_UP:
        parse_resource(resource)
        check_resource(resource, resource["resourceType"])


def _parse(url: str, *, query: bool) -> tuple[str, str, int, str, str | None]:
    """(scheme, host, port, path, query) of an http(s) URL, read by the parser that connects.

    urllib3's ``parse_url`` is what requests hands the URL to, so the host checked here is the
    host connected to. The standard library's reading must agree with it, and whatever the
    two parsers could read differently is refused: backslashes, controls and spaces, user info,
    a fragment or an empty query marker, and dot segments (urllib3 removes ``.`` and ``..``;
    a percent-encoded one is refused, as a server might decode it).
    """
    if "\\" in url or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("FHIR URL has a backslash, a space or a control character")
    try:
        parsed = parse_url(url)
        split = urlsplit(url)
        split_port = split.port
    except (LocationParseError, ValueError):
        raise ValueError("FHIR URL cannot be parsed (or has an invalid port)") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("FHIR URL must be http or https")
    if parsed.auth is not None or "@" in (split.netloc or ""):
        raise ValueError("FHIR URL must not carry user info")
    if parsed.fragment is not None or "#" in url:
        raise ValueError("FHIR URL must not carry a fragment")
    if "?" in url and (not query or not parsed.query):
        raise ValueError("FHIR base URL must not carry a query" if not query else "empty query")
    host = (parsed.host or "").lower()
    if not host:
        raise ValueError("FHIR URL has no host")
    if host.strip("[]") != (split.hostname or "").lower() or parsed.port != split_port:
        raise ValueError("FHIR URL is read differently by two parsers")
    port = parsed.port or DEFAULT_PORTS[scheme]
    path = parsed.path or ""
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        raise ValueError("FHIR URL has a dot segment")
    return scheme, host, port, path, parsed.query


def normalise_base(url: str) -> str:
    """A FHIR base URL in one comparable form: scheme, host, port, path without trailing slash.

    Raises ValueError for anything that is not a plain http(s) base (user info, query,
    fragment, anything two URL parsers read differently), so a crafted ``fhirServer`` cannot
    slip past the allowlist comparison.
    """
    scheme, host, port, path, _ = _parse(url.strip(), query=False)
    return f"{scheme}://{host}:{port}{path.rstrip('/')}"


def follow_link(url: str, base: str) -> str | None:
    """``url`` (a ``next`` link, resolved) as it will be requested, if it lies under ``base``;
    ``None`` when it leaves the base or cannot be read one way only."""
    try:
        scheme, host, port, path, query = _parse(url, query=True)
        root = normalise_base(base)
    except ValueError:
        return None
    target = f"{scheme}://{host}:{port}{path.rstrip('/')}"
    if target != root and not target.startswith(root + "/"):
        return None
    authority = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")


class Allowlist:
    """The FHIR base URLs the service may send an EHR's token to (CDS_ALLOWED_FHIR_SERVERS)."""

    def __init__(self, bases: Iterable[str] = ()) -> None:
        self._bases = frozenset(normalise_base(base) for base in bases if base.strip())

    @classmethod
    def from_setting(cls, value: str) -> Allowlist:
        """Parse the comma-separated setting; a malformed entry is a configuration error.

        The error names the entry's position, not its text (it might carry a password).
        """
        parts = [part for part in value.split(",") if part.strip()]
        for position, part in enumerate(parts, start=1):
            try:
                normalise_base(part)
            except ValueError as exc:
                raise ValueError(f"CDS_ALLOWED_FHIR_SERVERS entry {position}: {exc}") from None
        return cls(parts)

    def __len__(self) -> int:
        return len(self._bases)

    def allows(self, base: str) -> bool:
        try:
            return normalise_base(base) in self._bases
        except ValueError:
            return False

    def check(self, base: str) -> None:
        if not self.allows(base):
            raise FhirNotAllowed()


def same_base(url: str, base: str) -> bool:
    """Whether ``url`` lies under ``base`` (same scheme, host, port and path prefix)."""
    return follow_link(url, base) is not None


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Raw resources from one read or search, across the pages that were followed."""

    resources: list[dict[str, Any]]
    pages: int = 1
    # True when a next page existed but was not followed (page or entry cap, other host).
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ClientLimits:
    timeout_s: float = 1.0  # each HTTP call (connect, and each read), never beyond the deadline
    connect_timeout_s: float = 0.5
    max_pages: int = 5  # Bundle pages followed per fetch
    max_entries: int = 10_000  # resources kept per fetch
    # One response body. A search page of 1,000 Conditions is about 2 MB; the cap leaves room
    # and keeps a hostile body from costing seconds of parsing and a gigabyte of memory.
    max_bytes: int = 16 * 1024 * 1024
    # JSON objects and arrays in one body, counted before it is parsed: each costs memory
    # and time to build (31 MB of `{}` is ten million of them), real data has few per kB.
    max_containers: int = 250_000
    pool_size: int = 16  # HTTP connections per host and worker threads for parallel fetch


def json_containers(raw: bytes) -> int:
    """The JSON objects and arrays a body could hold, counted on its bytes before parsing (an
    upper bound: a brace or bracket inside a string counts too).

    Counted as what ``replace`` removes: it finds a byte with ``memchr`` and copies the runs
    between, where ``count`` compares byte by byte (0.24 ms against 0.63 ms for the benchmark's
    900 kB record, measured; the two copies are freed at once)."""
    return 2 * len(raw) - len(raw.replace(b"{", b"")) - len(raw.replace(b"[", b""))


class _Watchdog:
    """Shuts one HTTP exchange's socket down at its deadline.

    Socket timeouts count per read: a server that dribbles its status line or headers a
    byte at a time could hold a fetch thread for as long as it likes. The connection
    the exchange takes from the pool is attached here (see ``_WatchedHTTPPool``) and a
    timer shuts its socket down when the deadline passes, which ends any blocked read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: BaseHTTPConnection | None = None
        self._finished = False
        self.fired = False

    def attach(self, connection: BaseHTTPConnection) -> None:
        with self._lock:
            if not self._finished:
                self._connection = connection

    def fire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
            sock = getattr(self._connection, "sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._connection = None

    @property
    def finished(self) -> bool:
        return self._finished


class _Deadlines:
    """One thread that fires every exchange's watchdog at its deadline.

    A timer thread per exchange cost a thread start and a thread exit per FHIR request (seven
    per call without prefetch). Here each exchange is put on one heap by deadline, and one
    daemon thread per process sleeps until the earliest is due; an exchange that finished in
    time is passed over when its turn comes. Started on first use, and again in a forked
    child (a thread does not survive ``fork``)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._due = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Watchdog]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, watchdog: _Watchdog, deadline: float) -> None:
        """Fire ``watchdog`` when ``time.monotonic()`` passes ``deadline``, unless it has
        finished by then."""
        with self._due:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fhir-deadlines", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (deadline, next(self._order), watchdog))
            if self._heap[0][2] is watchdog:
                self._due.notify()  # a new earliest deadline

    def _run(self) -> None:
        while True:
            with self._due:
                due = self._next_due()
            due.fire()

    def _next_due(self) -> _Watchdog:
        while True:
            while self._heap and self._heap[0][2].finished:
                heapq.heappop(self._heap)
            if not self._heap:
                self._due.wait()
                continue
            wait = self._heap[0][0] - time.monotonic()
            if wait <= 0:
                return heapq.heappop(self._heap)[2]
            self._due.wait(wait)


_DEADLINES = _Deadlines()
_current = threading.local()  # the watchdog of the exchange running on this thread


@contextlib.contextmanager
def _watched(deadline: float) -> typing.Iterator[_Watchdog]:
    """Watch the exchange run inside: its socket is shut down if ``deadline`` passes first."""
    watchdog = _Watchdog()
    _current.watchdog = watchdog
    _DEADLINES.watch(watchdog, deadline)
    try:
        yield watchdog
    finally:
        watchdog.finish()
        _current.watchdog = None


def _attach(connection: BaseHTTPConnection) -> BaseHTTPConnection:
    watchdog = getattr(_current, "watchdog", None)
    if isinstance(watchdog, _Watchdog):
        watchdog.attach(connection)
    return connection


class _WatchedHTTPPool(HTTPConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        return _attach(super()._get_conn(timeout))


class _WatchedHTTPSPool(HTTPSConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> BaseHTTPConnection:
        return _attach(super()._get_conn(timeout))


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


class FhirClient:
    """One pooled HTTP session and one thread pool for every FHIR call the service makes.

    Thread-safe for concurrent ``fetch`` calls. Errors leave as ``cds_hooks.errors``
    (``FhirUnavailable``, ``FhirAuthError``, ``FhirError``) whose messages name the
    HTTP status or the failure kind only: never the URL (its query carries patient ids),
    the token or the response body.
    """

    def __init__(
        self,
        limits: ClientLimits | None = None,
        session: requests.Session | None = None,
        *,
        ca_bundle: str | None = None,
    ) -> None:
        self.limits = limits or ClientLimits()
        self.session = session or requests.Session()
        # TLS is always verified: against certifi's CAs, or a hospital CA bundle given here
        # (the environment's REQUESTS_CA_BUNDLE is not read, see trust_env below).
        self.session.verify = ca_bundle or True
        adapter = _WatchedAdapter(
            pool_connections=self.limits.pool_size,
            pool_maxsize=self.limits.pool_size,
            max_retries=0,
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # No cookies (a FHIR server's cookie must not ride along with another patient's
        # request) and nothing from the environment: .netrc credentials would replace the
        # Authorization header requests sees no auth for.
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.session.trust_env = False
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self._lock = threading.Lock()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The shared pool for parallel fetches, made on first use in each process.

        Threads do not survive ``fork``: a client built before gunicorn forks its
        workers gets a fresh pool in each worker.
        """
        with self._lock:
            if self._executor is None or self._executor_pid != os.getpid():
                self._executor = ThreadPoolExecutor(
                    max_workers=self.limits.pool_size, thread_name_prefix="fhir-fetch"
                )
                self._executor_pid = os.getpid()
            return self._executor

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        self.session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def fetch(
        self, base: str, relative: str, token: str | None, deadline: float | None = None
    ) -> FetchResult:
        """GET ``base/relative`` and, for a Bundle, its ``next`` pages on the same base.

        ``deadline`` is a ``time.monotonic()`` instant; no call outlives it.
        """
        if deadline is None:
            deadline = time.monotonic() + self.limits.timeout_s * (self.limits.max_pages + 1)
        url = f"{base.rstrip('/')}/{relative.lstrip('/')}"
        resources: list[dict[str, Any]] = []
        pages = 0
        while True:
            body = self._get_json(url, token, deadline)
            pages += 1
            resource_type = body.get("resourceType")
            if resource_type == "OperationOutcome":
                raise FhirError("The FHIR server answered with an OperationOutcome.")
            if resource_type != "Bundle":
                return FetchResult(resources=[body], pages=pages)
            room = self.limits.max_entries - len(resources)
            page_resources = bundle_resources(body)
            resources.extend(page_resources[:room])
            next_url = next_link(body)
            if next_url is None:
                return FetchResult(resources=resources, pages=pages)
            if len(page_resources) >= room:
                logger.warning("FHIR search stopped at the entry cap (%d)", self.limits.max_entries)
                return FetchResult(resources=resources, pages=pages, truncated=True)
            if pages >= self.limits.max_pages:
                logger.warning("FHIR search stopped at the page cap (%d)", self.limits.max_pages)
                return FetchResult(resources=resources, pages=pages, truncated=True)
            followed = follow_link(urljoin(url, next_url), base)
            if followed is None:
                # Following it would send the token to a server nobody allowed.
                logger.warning("FHIR search next link leaves the fhirServer base; not followed")
                return FetchResult(resources=resources, pages=pages, truncated=True)
            url = followed

    def _get_json(self, url: str, token: str | None, deadline: float) -> dict[str, Any]:
        remaining = _remaining(deadline)
        with _watched(deadline) as watchdog:
            try:
                raw = self._exchange(url, token, deadline, remaining)
            except FhirError:
                if watchdog.fired:
                    raise FhirUnavailable("The FHIR server did not answer in time.") from None
                raise
        if watchdog.fired:  # the body may have been cut short by the shutdown
            raise FhirUnavailable("The FHIR server did not answer in time.")
        if json_containers(raw) > self.limits.max_containers:
            raise FhirError("The FHIR server's answer is too large.")
        _remaining(deadline)  # no parsing once the budget is spent
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise FhirError("The FHIR server's answer is not JSON.") from None
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirError("The FHIR server's answer is not a FHIR resource.")
        return body

    def _exchange(self, url: str, token: str | None, deadline: float, remaining: float) -> bytes:
        """One GET: status checked, body read; transport failures converted."""
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = (
            min(self.limits.connect_timeout_s, remaining),
            min(self.limits.timeout_s, remaining),
        )
        try:
            response = self.session.get(
                url, headers=headers, timeout=timeout, stream=True, allow_redirects=False
            )
        except requests.Timeout:
            raise FhirUnavailable("The FHIR server did not answer in time.") from None
        except requests.RequestException:
            raise FhirUnavailable("The FHIR server could not be reached.") from None
        try:
            _check_status(response.status_code)
            return self._read_body(response, deadline)
        finally:
            response.close()

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """Read the body in small steps so neither the deadline nor the size cap can be outrun."""
        chunks: list[bytes] = []
        size = 0
        raw = response.raw
        try:
            while True:
                _tighten_socket(raw, _remaining(deadline))
                chunk = raw.read1(64 * 1024, decode_content=True)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise FhirError("The FHIR server's answer is too large.")
                chunks.append(chunk)
        except (TimeoutError, ReadTimeoutError):
            raise FhirUnavailable("The FHIR server did not answer in time.") from None
        except (OSError, HTTPError):
            raise FhirUnavailable("The FHIR server's answer was cut off.") from None


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FhirUnavailable("The FHIR server did not answer within the time budget.")
    return remaining


def _tighten_socket(raw: Any, remaining: float) -> None:
    """Cap the next socket read at what is left of the budget (per-read timeouts alone reset)."""
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(remaining)


def _check_status(status: int) -> None:
    if 200 <= status < 300:
        return
    if status in (401, 403):
        raise FhirAuthError(f"The FHIR server refused the access token (HTTP {status}).")
    if status == 429 or status >= 500:
        raise FhirUnavailable(f"The FHIR server is unavailable (HTTP {status}).")
    raise FhirError(f"The FHIR server answered HTTP {status}.")


def bundle_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The matched resources of a Bundle page; search outcomes and malformed entries are skipped."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    found: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        found.append(resource)
    return found


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None


# --- Guarded JSON calls for other endpoints (the SMART launch's OAuth calls) ---------


def guarded_url(url: str) -> str:
    """``url`` as it will be requested, read by the parser that connects (see ``_parse``)."""
    scheme, host, port, path, query = _parse(url.strip(), query=True)
    authority = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")


def guarded_json(
    client: FhirClient,
    method: str,
    url: str,
    deadline: float,
    *,
    form: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One GET (or form POST) with the FHIR client's guards: (status, parsed JSON body).

    The same deadline watchdog, per-read socket limit, size cap after decompression
    (``client.limits.max_bytes``), no redirects and no environment credentials as a FHIR
    fetch. The status is returned, not judged: an OAuth error answer is JSON too. Raises
    ``FhirUnavailable`` (unreachable, too slow) or ``FhirError`` (too large, not JSON).
    """
    try:
        target = guarded_url(url)
    except ValueError:
        raise FhirError("The endpoint URL is not acceptable.") from None
    remaining = _remaining(deadline)
    timeout = (
        min(client.limits.connect_timeout_s, remaining),
        min(client.limits.timeout_s, remaining),
    )
    with _watched(deadline) as watchdog:
        try:
            try:
                response = client.session.request(
                    method,
                    target,
                    headers={"Accept": "application/json"},
                    data=form,
                    timeout=timeout,
                    stream=True,
                    allow_redirects=False,
                )
            except requests.Timeout:
                raise FhirUnavailable("The endpoint did not answer in time.") from None
            except requests.RequestException:
                raise FhirUnavailable("The endpoint could not be reached.") from None
            try:
                status = response.status_code
                raw = client._read_body(response, deadline)
            finally:
                response.close()
        except FhirError:
            if watchdog.fired:
                raise FhirUnavailable("The endpoint did not answer in time.") from None
            raise
    if watchdog.fired:
        raise FhirUnavailable("The endpoint did not answer in time.")
    try:
        return status, json.loads(raw)
    except (ValueError, RecursionError):
        raise FhirError("The endpoint's answer is not JSON.") from None
