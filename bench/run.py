"""Benchmark: the patient-view service against a bare Flask reference, in one run.

Starts the Medplum FHIR test server (tests/fhir_server) with the synthetic
patients, the service (`mkopper-cds serve`, gunicorn) and the reference
(bench/reference_app.py, the same gunicorn configuration), then measures with
wrk at 16 connections (throughput, p50 and p99) these scenarios:

- ``reference``: the bare Flask JSON POST (the typical call's body);
- ``nocard``: patient-view for a patient without m-kopper (what nearly every real call is),
  all prefetch in the request: the call answers no card;
- ``cards``: patient-view for a typical suspected case, all prefetch in the request: the call
  answers cards;
- ``fetch``: the same patient without prefetch, fetched from the FHIR server on loopback;
- ``large``: patient-view with prefetch for the large synthetic record (1,000 Conditions);
- ``signed``: the ``cards`` call as production makes it, each call with its own ES384-signed
  JWT (a pinned key set in ``CDS_TRUSTED_CLIENTS``): signature check and one replay-cache
  insert per call. The tokens are made before the figure, a little more than it can use.

The scenarios run in rounds, interleaved (reference, nocard, cards, signed, fetch, large, then
again), so a change in the machine's load between rounds moves them all alike; each round's figures
are also taken as ratios to that round's reference, and the table shows the medians over the
rounds (``--rounds``, 3 by default). CPU per call is the CPU time the server's processes (the
gunicorn master and its workers, from /proc) used during the figure, divided by the calls
answered. With ``--half-rate`` each round also measures the latency at a constant rate of half
of the scenario's peak (bench/rate.py; the reference at the ``cards`` rate).

It asserts no timings: it fails only when something does not run or answers with an error.
``--short`` is the CI version (one round, a second per figure).

    .venv/bin/python bench/run.py [--short] [--rounds 3] [--workers 2] [--worker-class gthread]
    .venv/bin/python bench/run.py --matrix   # worker type and count comparison
    .venv/bin/python bench/run.py --configs gthread:2:256,sync:2   # chosen configurations
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rate import constant_rate  # noqa: E402 - after the path is set
from plugin.cli.serve import (  # noqa: E402 - the service's own defaults
    DEFAULT_THREADS,
    DEFAULT_WORKER_CLASS,
    WORKER_CLASSES,
)
from tests.support.fhirserver import FhirTestServer, server_available  # noqa: E402
from tests.support.jwt_keys import ISSUER, ec_key, write_trusted_clients  # noqa: E402

PATIENTS = ROOT / "fhir_profiles" / "patients"
LUA = Path(__file__).resolve().parent / "post.lua"
FHIR_TOKEN = "bench-fhir-token"  # noqa: S105 - the test server's own token, not a secret
TYPICAL = "mk-suspected-emergency-respiratory"
LARGE = "mk-large-record"
NO_CARD = "mk-control"
# What each scenario must answer, so that it measures what its name says.
CARDS_EXPECTED = {"nocard": False, "cards": True, "signed": True, "fetch": True, "large": True}
# The order of the scenarios within each round ("signed" after "nocard" and "cards": its tokens
# are counted from the rates they reached).
SCENARIOS = ("reference", "nocard", "cards", "signed", "fetch", "large")
# Signed tokens made per figure: this many times what the faster of "nocard" and "cards"
# answered in as long, and a floor. Each wrk thread takes its own share, and the threads need
# not go equally fast (their connections may sit on workers of different load): a share then
# covers more than the whole figure, since a signed call is never quicker than a call
# without a card.
TOKEN_HEADROOM = 1.4
MIN_TOKENS = 2000
SIGNING_KEY = ec_key("bench-es384", "ES384")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 60.0


@dataclass
class Figure:
    """One scenario in one round (or, in a summary, the medians over the rounds)."""

    scenario: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms: float = 0.0  # CPU time of the server's processes per call answered
    half_rate: float = 0.0
    half_p50_ms: float = 0.0
    half_p99_ms: float = 0.0
    # rps: this figure over the same round's reference; p99_p50: p99 over p50.
    ratios: dict[str, float] = field(default_factory=dict)
    # Answers under load that were not 2xx (or failed at the socket): counted in req/s too.
    failed_calls: int = 0
    error: str = ""


class ScenarioError(RuntimeError):
    """A scenario answered with an error: reported, the others still run, the exit code is 1."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(
    method: str, url: str, body: Any = None, timeout: float = 30, token: str | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Accept", "application/fhir+json, application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Process:
    """A server process, its start-to-ready time and its workers' memory."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, port: int):
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        started = time.perf_counter()
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
            argv, env=env, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.ready_s = self._wait_ready(started)

    def _wait_ready(self, started: float) -> float:
        while time.perf_counter() - started < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        return time.perf_counter() - started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S} s")

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def cpu_s(self) -> float:
        """CPU time (user and system) the master and its workers have used so far."""
        total = 0
        for pid in [self.proc.pid, *self.workers()]:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            # Fields after the command name (which may hold spaces) in parentheses.
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLOCK_TICKS

    def memory_mb(self) -> dict[str, float]:
        """Largest RSS and PSS (shared pages divided among sharers) of a worker, in MB."""
        rss, pss = 0.0, 0.0
        for pid in self.workers():
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", rollup, re.M))
            rss = max(rss, int(fields.get("Rss", 0)) / 1024)
            pss = max(pss, int(fields.get("Pss", 0)) / 1024)
        return {"worker_rss_mb": round(rss, 1), "worker_pss_mb": round(pss, 1)}

    def stop(self) -> float:
        """SIGTERM (graceful) and the seconds until the process is gone."""
        started = time.perf_counter()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()
        return time.perf_counter() - started


def start_service(tmp: Path, fhir_base: str, args: argparse.Namespace) -> Process:
    port = free_port()
    env = dict(os.environ)
    env.update(
        CDS_DATA_DIR=str(tmp / "service"),
        CDS_ALLOW_UNSIGNED="1",
        CDS_TRUSTED_CLIENTS=str(
            write_trusted_clients(tmp, [{"iss": ISSUER, "jwks": SIGNING_KEY.jwks()}])
        ),
        CDS_ALLOWED_FHIR_SERVERS=fhir_base,
        CDS_LOG_LEVEL=args.log_level,
    )
    env.pop("CDS_DATABASE_URL", None)
    if args.database_url:
        env["CDS_DATABASE_URL"] = args.database_url
    argv = [
        sys.executable,
        "-m",
        "plugin.cli.serve",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--worker-class",
        args.worker_class,
        "--threads",
        str(args.threads),
    ]
    return Process("service", argv, env, tmp / "service.log", port)


def start_reference(tmp: Path, args: argparse.Namespace) -> Process:
    port = free_port()
    argv = [
        sys.executable,
        str(ROOT / "bench" / "reference_app.py"),
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--worker-class",
        args.worker_class,
        "--threads",
        str(args.threads),
    ]
    return Process("reference", argv, dict(os.environ), tmp / "reference.log", port)


def load_patient(fhir: FhirTestServer, patient: str) -> None:
    bundle = json.loads((PATIENTS / f"{patient}.json").read_text(encoding="utf-8"))
    status, body = fhir.request("POST", "/", bundle)
    if status != 200:
        raise RuntimeError(f"loading {patient} failed ({status}): {json.dumps(body)[:500]}")


def search_all(fhir: FhirTestServer, query: str) -> dict[str, Any]:
    """A read, or every page of a search as one searchset Bundle (as an EHR would prefetch)."""
    entries: list[Any] = []
    path: str | None = "/" + query
    while path:
        status, page = fhir.request("GET", path)
        if status != 200:
            raise RuntimeError(f"{query.split('?')[0]} failed ({status})")
        if page.get("resourceType") != "Bundle":
            return dict(page)
        entries.extend(page.get("entry") or [])
        link = next(
            (ln["url"] for ln in page.get("link", []) if ln.get("relation") == "next"), None
        )
        path = link[len(fhir.base_url) :] if link and link.startswith(fhir.base_url) else None
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


CONTEXT_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")


def fill(template: str, context: dict[str, Any]) -> str | None:
    """The template's query for this context; ``None`` when it names a missing context key."""
    if any(name not in context for name in CONTEXT_TOKEN.findall(template)):
        return None
    return CONTEXT_TOKEN.sub(
        lambda m: urllib.parse.quote(str(context[m.group(1)]), safe=""), template
    )


def patient_context(patient: str) -> dict[str, Any]:
    """patient-view context for a synthetic patient, with the encounter the chart is opened in."""
    bundle = json.loads((PATIENTS / f"{patient}.json").read_text(encoding="utf-8"))
    context: dict[str, Any] = {"userId": "Practitioner/bench", "patientId": patient}
    encounters = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
    ]
    current = [enc for enc in encounters if enc.get("status") == "in-progress"] or encounters
    if current:
        context["encounterId"] = current[0]["id"]
    return context


def hook_body(
    context: dict[str, Any],
    fhir: FhirTestServer,
    prefetch: dict[str, str] | None,
    with_prefetch: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir.base_url,
        "fhirAuthorization": {
            "access_token": FHIR_TOKEN,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "patient/*.read",
            "subject": "mkopper-cds",
        },
        "context": context,
    }
    if with_prefetch:
        queries = {key: fill(template, context) for key, template in (prefetch or {}).items()}
        body["prefetch"] = {
            key: search_all(fhir, query) for key, query in queries.items() if query is not None
        }
    return body


def pick_service(base: str, wanted: str | None) -> dict[str, Any]:
    status, discovery = http_json("GET", base + "/cds-services")
    if status != 200:
        raise RuntimeError(f"discovery answered {status}")
    services = [s for s in discovery["services"] if s["hook"] == "patient-view"]
    if wanted:
        services = [s for s in services if s["id"] == wanted]
    if not services:
        raise RuntimeError("no patient-view service in discovery")
    service: dict[str, Any] = services[0]
    return service


def run_wrk(
    url: str, body_file: Path, duration_s: int, connections: int, tokens: Path | None = None
) -> dict[str, Any]:
    env = dict(os.environ, BENCH_BODY=str(body_file))
    if tokens is not None:
        env.update(BENCH_TOKENS=str(tokens), BENCH_THREADS="2")
    out = subprocess.run(  # noqa: S603 - wrk from PATH, fixed arguments
        [
            shutil.which("wrk") or "/usr/bin/wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


@dataclass
class Scenario:
    """A scenario's URL, body (also kept in a file for wrk and bench/profile.py) and server."""

    name: str
    url: str
    body: bytes
    body_file: Path
    server: Process
    signed: bool = False  # each call with its own JWT (see make_tokens)


def make_tokens(url: str, count: int, path: Path) -> Path:
    """``count`` fresh JWTs for ``url``, one per line (each is good for one call)."""
    now = time.time()
    lines = (SIGNING_KEY.token(url, now=now) for _ in range(count))
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def prepare(name: str, url: str, body: dict[str, Any], server: Process, out: Path) -> Scenario:
    """Write the body, check that the call answers what its name says."""
    body_file = out.parent / "bench-bodies" / f"{name}.json"
    body_file.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(body).encode()
    body_file.write_bytes(raw)
    signed = name == "signed"
    token = SIGNING_KEY.token(url, now=time.time()) if signed else None
    status, answer = http_json("POST", url, body, token=token)
    if status != 200:
        raise ScenarioError(f"{name}: the call answered {status}: {json.dumps(answer)[:500]}")
    wanted = CARDS_EXPECTED.get(name)
    if wanted is not None and bool(answer.get("cards")) != wanted:
        raise ScenarioError(f"{name}: expected {'cards' if wanted else 'no card'}, got {answer}")
    return Scenario(name, url, raw, body_file, server, signed=signed)


def measure(
    scenario: Scenario, args: argparse.Namespace, warm_up: bool, rate_hint: float = 0.0
) -> Figure:
    """Peak with wrk at ``args.connections``; an error is reported, the others still run.
    ``rate_hint``: the calls per second a signed scenario may reach (its tokens are counted
    from it)."""
    try:
        tokens = scenario.body_file.with_suffix(".tokens") if scenario.signed else None
        count = max(MIN_TOKENS, int(TOKEN_HEADROOM * rate_hint * (args.duration + 1)))
        if warm_up:  # caches, lazy imports, connections
            if tokens is not None:
                make_tokens(scenario.url, count, tokens)
            run_wrk(scenario.url, scenario.body_file, 1, args.connections, tokens)
        if tokens is not None:
            make_tokens(scenario.url, count, tokens)
        cpu_before = scenario.server.cpu_s()
        peak = run_wrk(scenario.url, scenario.body_file, args.duration, args.connections, tokens)
        cpu = scenario.server.cpu_s() - cpu_before
    except (ScenarioError, subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"  {scenario.name:10s} FAILED: {exc}", flush=True)
        return Figure(scenario=scenario.name, error=str(exc)[:1000])
    # Errors under load are counted and reported (the run then exits 1), the figures kept.
    failed = peak["non_2xx"] + peak["socket_errors"]
    if failed:
        print(f"  {scenario.name:10s} {failed} of {peak['requests']} calls failed", flush=True)
    return Figure(
        scenario=scenario.name,
        rps=round(peak["rps"], 1),
        p50_ms=round(peak["p50_us"] / 1000, 2),
        p99_ms=round(peak["p99_us"] / 1000, 2),
        cpu_ms=round(cpu * 1000 / max(1, peak["requests"]), 3),
        failed_calls=failed,
    )


def measure_half_rate(scenario: Scenario, figure: Figure, rate: float, duration: int) -> None:
    """Latency at a constant ``rate`` (bench/rate.py: no coordinated omission)."""
    if figure.error:
        return
    half = constant_rate(scenario.url, scenario.body, max(1.0, rate), duration)
    if half.errors:
        figure.error = f"{scenario.name}: {half.errors} errors at a constant {rate:.0f}/s"
        return
    figure.half_rate = round(half.rate, 1)
    figure.half_p50_ms = round(half.p50_ms, 2)
    figure.half_p99_ms = round(half.p99_ms, 2)


def add_ratios(figures: list[Figure]) -> None:
    """Each figure's throughput over the reference's in the same round, and its p99/p50."""
    ref = next((f for f in figures if f.scenario == "reference" and not f.error), None)
    for fig in figures:
        if fig.error:
            continue
        fig.ratios = {
            "rps": round(fig.rps / ref.rps, 3) if ref and ref.rps else 0.0,
            "p99_p50": round(fig.p99_ms / fig.p50_ms, 2) if fig.p50_ms else 0.0,
        }


def print_figure(fig: Figure) -> None:
    if fig.error:
        return
    line = (
        f"  {fig.scenario:10s} {fig.rps:8.1f} req/s  ×ref {fig.ratios.get('rps', 0):5.2f}  "
        f"p50 {fig.p50_ms:7.2f} ms  p99 {fig.p99_ms:7.2f} ms  "
        f"(p99/p50 {fig.ratios.get('p99_p50', 0):5.1f})  CPU {fig.cpu_ms:5.2f} ms/call"
    )
    if fig.half_rate:
        line += (
            f" | at {fig.half_rate:.0f}/s: p50 {fig.half_p50_ms:.2f} p99 {fig.half_p99_ms:.2f} ms"
        )
    print(line, flush=True)


def summarise(rounds: list[list[Figure]]) -> list[Figure]:
    """Per scenario, the median of each figure and of each ratio over the rounds.

    A scenario that failed in any round is reported as failed.
    """
    summary = []
    for index, first in enumerate(rounds[0]):
        same = [figures[index] for figures in rounds]
        errors = [fig.error for fig in same if fig.error]
        if errors:
            summary.append(Figure(scenario=first.scenario, error=errors[0]))
            continue
        median = Figure(scenario=first.scenario)
        for key in ("rps", "p50_ms", "p99_ms", "cpu_ms", "half_rate", "half_p50_ms", "half_p99_ms"):
            setattr(median, key, round(statistics.median(getattr(f, key) for f in same), 3))
        median.failed_calls = sum(f.failed_calls for f in same)
        median.ratios = {
            key: round(statistics.median(f.ratios[key] for f in same), 3) for key in same[0].ratios
        }
        summary.append(median)
    return summary


def machine() -> dict[str, Any]:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout  # noqa: S607
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name")
            ),
            "",
        )
    except OSError:
        pass
    commit = subprocess.run(  # noqa: S603 - git from PATH, fixed arguments
        [shutil.which("git") or "/usr/bin/git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(figures: list[Figure]) -> str:
    half = any(f.half_rate for f in figures)
    head = "| scenario | req/s | ×ref | p50 ms | p99 ms | p99/p50 | CPU ms/call |"
    if half:
        head += " constant rate/s | p50 ms | p99 ms |"
    columns = head.count("|") - 1
    lines = [head, "|" + "---|" * columns]
    for f in figures:
        if f.error:
            lines.append(f"| {f.scenario} | failed: {f.error[:80]} |" + " |" * (columns - 2))
            continue
        failed = f" ({f.failed_calls} calls failed)" if f.failed_calls else ""
        line = (
            f"| {f.scenario}{failed} | {f.rps:.0f} | {f.ratios['rps']:.2f} | {f.p50_ms:.2f} | "
            f"{f.p99_ms:.2f} | {f.ratios['p99_p50']:.1f} | {f.cpu_ms:.2f} |"
        )
        if half:
            line += f" {f.half_rate:.0f} | {f.half_p50_ms:.2f} | {f.half_p99_ms:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def bench_config(args: argparse.Namespace, fhir: FhirTestServer, tmp: Path) -> dict[str, Any]:
    """One configuration: the servers started once, the scenarios in interleaved rounds."""
    service = start_service(tmp, fhir.base_url, args)
    reference = start_reference(tmp, args)
    try:
        chosen = pick_service(service.base, args.service)
        url = f"{service.base}/cds-services/{chosen['id']}"
        ref_url = f"{reference.base}/cds-services/{chosen['id']}"
        prefetch = chosen.get("prefetch") or {}
        typical = patient_context(args.patient)
        print(
            f"service {chosen['id']} ({args.worker_class}, {args.workers} workers, "
            f"{args.threads} threads), ready in {service.ready_s:.2f} s; "
            f"reference ready in {reference.ready_s:.2f} s",
            flush=True,
        )
        bodies = {
            "reference": (ref_url, hook_body(typical, fhir, prefetch, True), reference),
            "nocard": (url, hook_body(patient_context(NO_CARD), fhir, prefetch, True), service),
            "cards": (url, hook_body(typical, fhir, prefetch, True), service),
            "signed": (url, hook_body(typical, fhir, prefetch, True), service),
            "fetch": (url, hook_body(typical, fhir, prefetch, False), service),
            "large": (url, hook_body(patient_context(LARGE), fhir, prefetch, True), service),
        }
        names = [name for name in SCENARIOS if not (args.skip_large and name == "large")]
        scenarios: list[Scenario | Figure] = []
        for name in names:
            try:
                scenarios.append(prepare(name, *bodies[name], args.out))
            except ScenarioError as exc:
                print(f"  {name:10s} FAILED: {exc}", flush=True)
                scenarios.append(Figure(scenario=name, error=str(exc)[:1000]))
        rounds: list[list[Figure]] = []
        for number in range(args.rounds):
            load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
            print(f" round {number + 1} of {args.rounds} (load average {load})", flush=True)
            figures: list[Figure] = []
            for item in scenarios:
                if isinstance(item, Figure):
                    figures.append(item)
                    continue
                rate = max(
                    (f.rps for f in figures if f.scenario in ("nocard", "cards")), default=0.0
                )
                figures.append(measure(item, args, warm_up=number == 0, rate_hint=rate))
            if args.half_rate:
                cards = next((f for f in figures if f.scenario == "cards"), None)
                for item, fig in zip(scenarios, figures, strict=True):
                    if isinstance(item, Scenario):
                        own = fig.rps / 2
                        if item.name == "reference" and cards is not None and cards.rps:
                            own = cards.rps / 2  # the same load as the typical call
                        measure_half_rate(item, fig, own, args.duration)
            add_ratios(figures)
            for fig in figures:
                print_figure(fig)
            rounds.append(figures)
        summary = summarise(rounds)
        memory = service.memory_mb()
        with urllib.request.urlopen(service.base + "/metrics", timeout=10) as resp:  # noqa: S310
            if b"cds_requests_total" not in resp.read():
                raise RuntimeError("/metrics does not count requests")
    finally:
        service_stop = service.stop()
        reference.stop()
    return {
        "config": {
            "worker_class": args.worker_class,
            "workers": args.workers,
            "threads": args.threads,
            "wrk_connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "patient": args.patient,
            "service": chosen["id"],
        },
        "ready_s": round(service.ready_s, 2),
        "reference_ready_s": round(reference.ready_s, 2),
        "sigterm_exit_s": round(service_stop, 2),
        **memory,
        "figures": [asdict(f) for f in summary],
        "rounds": [[asdict(f) for f in figures] for figures in rounds],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI: one round, 1 s per figure")
    parser.add_argument(
        "--matrix", action="store_true", help="compare sync and balanced with 2, 3 and 4 workers"
    )
    parser.add_argument(
        "--configs",
        default="",
        help="configurations one after the other, as class:workers[:threads], comma-separated",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default=DEFAULT_WORKER_CLASS, choices=WORKER_CLASSES)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--duration", type=int, default=10, help="seconds per figure")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    parser.add_argument(
        "--half-rate", action="store_true", help="also latency at half of each peak"
    )
    parser.add_argument("--patient", default=TYPICAL, help="the typical patient's id")
    parser.add_argument("--service", default=None, help="patient-view service id")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--log-level", default="INFO", help="CDS_LOG_LEVEL of the service")
    parser.add_argument("--database-url", default="", help="CDS_DATABASE_URL (default SQLite)")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench.json")
    args = parser.parse_args()
    if args.short:
        args.duration = 1
    if args.rounds is None:
        args.rounds = 1 if args.short else 3
    args.rounds = max(1, args.rounds)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package wrk)", file=sys.stderr)
        return 2
    reason = server_available()
    if reason:
        print(f"FHIR test server unavailable: {reason}", file=sys.stderr)
        return 2

    configs = [(args.worker_class, args.workers, args.threads)]
    if args.matrix:
        configs = [(kind, n, args.threads) for kind in ("sync", "balanced") for n in (2, 3, 4)]
    if args.configs:
        configs = []
        for item in args.configs.split(","):
            kind, count, *threads = item.split(":")
            configs.append((kind, int(count), int(threads[0]) if threads else args.threads))
    results = []
    fhir = FhirTestServer(token=FHIR_TOKEN, validate_on_write=False).start()
    with tempfile.TemporaryDirectory(prefix="mkopper-bench-") as tmp_name:
        try:
            load_patient(fhir, args.patient)
            load_patient(fhir, LARGE)
            load_patient(fhir, NO_CARD)
            for index, (kind, count, threads) in enumerate(configs):
                args.worker_class, args.workers, args.threads = kind, count, threads
                tmp = Path(tmp_name) / f"{index}-{kind}-{count}-{threads}"
                tmp.mkdir()
                result = bench_config(args, fhir, tmp)
                results.append(result)
                print(table([Figure(**f) for f in result["figures"]]), flush=True)
                print(
                    f"worker RSS {result['worker_rss_mb']} MB (PSS {result['worker_pss_mb']} MB), "
                    f"ready {result['ready_s']} s, SIGTERM exit {result['sigterm_exit_s']} s; "
                    f"{kind}, {count} workers"
                    + (f", {args.threads} threads" if kind != "sync" else "")
                    + (
                        f"; medians of {args.rounds} interleaved rounds"
                        if args.rounds > 1
                        else "; one round"
                    )
                    + "\n",
                    flush=True,
                )
        finally:
            fhir.stop()
    report = {"machine": machine(), "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"machine: {report['machine']}\nwritten: {args.out}")
    failed = [
        f["scenario"] for run in results for f in run["figures"] if f["error"] or f["failed_calls"]
    ]
    if failed:
        print(f"scenarios that answered errors: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
