"""Benchmark: the patient-view service against a bare Flask reference, in one run.

Starts the Medplum FHIR test server (tests/fhir_server) with the synthetic
patients, the service (`mkopper-cds serve`, gunicorn) and the reference
(bench/reference_app.py, the same gunicorn configuration), then measures with
wrk (peak throughput, p50/p99 at peak) and with bench/rate.py (p50/p99 at a
constant rate: half of the scenario's peak; for the reference, the typical
call's half-peak rate, so the two latencies are taken under the same load) for:

- ``nocard``: patient-view for a patient without m-kopper (what nearly every real call is),
  all prefetch in the request: the call answers no card;
- ``prefetch``: patient-view for a typical patient, all prefetch in the request;
- ``fetch``: the same patient without prefetch, fetched from the FHIR server on loopback;
- ``large``: patient-view with prefetch for the large synthetic record;
- ``reference``: the bare Flask JSON POST.

Prints a table and writes JSON; every figure also as a ratio to the reference.
It asserts no timings: it fails only when something does not run or answers
with an error. ``--short`` is the CI version (a second or two per figure).

    .venv/bin/python bench/run.py [--short] [--workers 2] [--worker-class gthread]
    .venv/bin/python bench/run.py --matrix   # worker type and count comparison
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
from plugin.cli.serve import DEFAULT_THREADS  # noqa: E402 - the service's own default
from tests.support.fhirserver import FhirTestServer, server_available  # noqa: E402

PATIENTS = ROOT / "fhir_profiles" / "patients"
LUA = Path(__file__).resolve().parent / "post.lua"
FHIR_TOKEN = "bench-fhir-token"  # noqa: S105 - the test server's own token, not a secret
TYPICAL = "mk-suspected-emergency-respiratory"
LARGE = "mk-large-record"
NO_CARD = "mk-control"
# What each scenario must answer, so that it measures what its name says.
CARDS_EXPECTED = {"nocard": False, "prefetch": True, "fetch": True, "large": True}
READY_TIMEOUT_S = 60.0


@dataclass
class Figure:
    scenario: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    half_rate: float = 0.0
    half_p50_ms: float = 0.0
    half_p99_ms: float = 0.0
    ratios: dict[str, float] = field(default_factory=dict)
    error: str = ""


class ScenarioError(RuntimeError):
    """A scenario answered with an error: reported, the others still run, the exit code is 1."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    req.add_header("Content-Type", "application/json")
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


def run_wrk(url: str, body_file: Path, duration_s: int, connections: int) -> dict[str, Any]:
    env = dict(os.environ, BENCH_BODY=str(body_file))
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


def measure(
    name: str,
    url: str,
    body: dict[str, Any],
    args: argparse.Namespace,
    rate: float | None = None,
) -> Figure:
    """Peak with wrk, then latency at ``rate`` (default: half of this scenario's peak)."""
    try:
        return measure_or_fail(name, url, body, args, rate)
    except ScenarioError as exc:
        print(f"  {name:10s} FAILED: {exc}", flush=True)
        return Figure(scenario=name, error=str(exc)[:1000])


def measure_or_fail(
    name: str, url: str, body: dict[str, Any], args: argparse.Namespace, rate: float | None
) -> Figure:
    # Kept after the run (next to the JSON report) for bench/profile.py.
    body_file = args.out.parent / "bench-bodies" / f"{name}.json"
    body_file.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(body).encode()
    body_file.write_bytes(raw)
    status, answer = http_json("POST", url, body)
    if status != 200:
        raise ScenarioError(f"{name}: the call answered {status}: {json.dumps(answer)[:500]}")
    wanted = CARDS_EXPECTED.get(name)
    if wanted is not None and bool(answer.get("cards")) != wanted:
        raise ScenarioError(f"{name}: expected {'cards' if wanted else 'no card'}, got {answer}")
    run_wrk(url, body_file, 1, args.connections)  # warm-up: caches, lazy imports, connections
    peak = run_wrk(url, body_file, args.duration, args.connections)
    if peak["non_2xx"] or peak["socket_errors"]:
        raise ScenarioError(f"{name}: errors under load: {peak}")
    figure = Figure(
        scenario=name,
        rps=round(peak["rps"], 1),
        p50_ms=round(peak["p50_us"] / 1000, 2),
        p99_ms=round(peak["p99_us"] / 1000, 2),
    )
    half = constant_rate(url, raw, rate or max(1.0, peak["rps"] / 2), args.duration)
    if half.errors:
        raise ScenarioError(f"{name}: {half.errors} errors at half rate")
    figure.half_rate = round(half.rate, 1)
    figure.half_p50_ms = round(half.p50_ms, 2)
    figure.half_p99_ms = round(half.p99_ms, 2)
    print(
        f"  {name:10s} {figure.rps:8.1f} req/s  p50 {figure.p50_ms:6.2f} ms  "
        f"p99 {figure.p99_ms:6.2f} ms | at {figure.half_rate:.0f}/s: "
        f"p50 {figure.half_p50_ms:.2f} p99 {figure.half_p99_ms:.2f} ms",
        flush=True,
    )
    return figure


def add_ratios(figures: list[Figure]) -> None:
    ref = next(f for f in figures if f.scenario == "reference")
    for fig in figures:
        if fig.error:
            continue
        fig.ratios = {
            key: round(getattr(fig, key) / getattr(ref, key), 2) if getattr(ref, key) else 0.0
            for key in ("rps", "p50_ms", "p99_ms", "half_p50_ms", "half_p99_ms")
        }


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
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def table(figures: list[Figure]) -> str:
    head = (
        "| scenario | req/s | ×ref | p50 ms | p99 ms | constant rate/s | p50 ms | p99 ms "
        "| p99 ×ref |"
    )
    lines = [head, "|" + "---|" * 9]
    for f in figures:
        if f.error:
            lines.append(f"| {f.scenario} | failed: {f.error[:80]} |" + " |" * 7)
            continue
        lines.append(
            f"| {f.scenario} | {f.rps:.0f} | {f.ratios['rps']:.2f} | {f.p50_ms:.2f} | "
            f"{f.p99_ms:.2f} | {f.half_rate:.0f} | {f.half_p50_ms:.2f} | {f.half_p99_ms:.2f} | "
            f"{f.ratios['half_p99_ms']:.2f} |"
        )
    return "\n".join(lines)


def bench_once(args: argparse.Namespace, fhir: FhirTestServer, tmp: Path) -> dict[str, Any]:
    service = start_service(tmp, fhir.base_url, args)
    reference = start_reference(tmp, args)
    try:
        chosen = pick_service(service.base, args.service)
        url = f"{service.base}/cds-services/{chosen['id']}"
        prefetch = chosen.get("prefetch") or {}
        typical = patient_context(args.patient)
        large = patient_context(LARGE)
        control = patient_context(NO_CARD)
        print(
            f"service {chosen['id']} ({args.worker_class}, {args.workers} workers, "
            f"{args.threads} threads), ready in {service.ready_s:.2f} s; "
            f"reference ready in {reference.ready_s:.2f} s",
            flush=True,
        )
        figures = [
            measure("prefetch", url, hook_body(typical, fhir, prefetch, True), args),
            measure("nocard", url, hook_body(control, fhir, prefetch, True), args),
            measure("fetch", url, hook_body(typical, fhir, prefetch, False), args),
        ]
        if not args.skip_large:
            figures.append(measure("large", url, hook_body(large, fhir, prefetch, True), args))
        # The reference's latency is taken at the typical call's half-peak rate: the same
        # load, so the latency ratio compares like with like (at half of its own, far higher
        # peak the load generator, not the server, would be measured).
        ref_url = f"{reference.base}/cds-services/{chosen['id']}"
        same_rate = figures[0].half_rate or None
        figures.append(
            measure("reference", ref_url, hook_body(typical, fhir, prefetch, True), args, same_rate)
        )
        add_ratios(figures)
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
            "patient": args.patient,
            "service": chosen["id"],
        },
        "ready_s": round(service.ready_s, 2),
        "sigterm_exit_s": round(service_stop, 2),
        **memory,
        "figures": [asdict(f) for f in figures],
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run whose every figure is the median over ``runs`` (all runs kept under "runs").

    The machine is shared with the load generator and the FHIR server, so a single run can
    catch a pause of another process in its p99; the median of a few runs does not.
    """
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0], repeats=runs)
    for key in ("ready_s", "sigterm_exit_s", "worker_rss_mb", "worker_pss_mb"):
        merged[key] = statistics.median(run[key] for run in runs)
    figures = []
    for index, first in enumerate(runs[0]["figures"]):
        same = [run["figures"][index] for run in runs]
        errors = [fig["error"] for fig in same if fig["error"]]
        figure = dict(first, error=errors[0] if errors else "")
        for key in ("rps", "p50_ms", "p99_ms", "half_rate", "half_p50_ms", "half_p99_ms"):
            figure[key] = round(statistics.median(fig[key] for fig in same), 2)
        figures.append(figure)
    as_figures = [Figure(**{k: v for k, v in f.items() if k != "ratios"}) for f in figures]
    add_ratios(as_figures)
    merged["figures"] = [asdict(f) for f in as_figures]
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI: a second per figure")
    parser.add_argument(
        "--matrix", action="store_true", help="compare sync/gthread with 2, 3 and 4 workers"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gthread", choices=("gthread", "sync"))
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--duration", type=int, default=10, help="seconds per figure")
    parser.add_argument("--patient", default=TYPICAL, help="the typical patient's id")
    parser.add_argument("--service", default=None, help="patient-view service id")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per configuration; the table shows medians"
    )
    parser.add_argument("--log-level", default="INFO", help="CDS_LOG_LEVEL of the service")
    parser.add_argument("--database-url", default="", help="CDS_DATABASE_URL (default SQLite)")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench.json")
    args = parser.parse_args()
    if args.short:
        args.duration = 1
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package wrk)", file=sys.stderr)
        return 2
    reason = server_available()
    if reason:
        print(f"FHIR test server unavailable: {reason}", file=sys.stderr)
        return 2

    configs = [(args.worker_class, args.workers)]
    if args.matrix:
        configs = [(kind, n) for kind in ("sync", "gthread") for n in (2, 3, 4)]
    results = []
    fhir = FhirTestServer(token=FHIR_TOKEN, validate_on_write=False).start()
    with tempfile.TemporaryDirectory(prefix="mkopper-bench-") as tmp_name:
        try:
            load_patient(fhir, args.patient)
            load_patient(fhir, LARGE)
            load_patient(fhir, NO_CARD)
            for kind, count in configs:
                args.worker_class, args.workers = kind, count
                repeats = []
                for attempt in range(max(1, args.repeat)):
                    tmp = Path(tmp_name) / f"{kind}-{count}-{attempt}"
                    tmp.mkdir()
                    repeats.append(bench_once(args, fhir, tmp))
                results.append(median_run(repeats))
                print(table([Figure(**f) for f in results[-1]["figures"]]), flush=True)
                print(
                    f"worker RSS {results[-1]['worker_rss_mb']} MB "
                    f"(PSS {results[-1]['worker_pss_mb']} MB), ready "
                    f"{results[-1]['ready_s']} s, SIGTERM exit "
                    f"{results[-1]['sigterm_exit_s']} s"
                    + (f" (medians of {len(repeats)} runs)" if len(repeats) > 1 else "")
                    + "\n",
                    flush=True,
                )
        finally:
            fhir.stop()
    report = {"machine": machine(), "runs": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"machine: {report['machine']}\nwritten: {args.out}")
    failed = [f["scenario"] for run in results for f in run["figures"] if f["error"]]
    if failed:
        print(f"scenarios that answered errors: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
