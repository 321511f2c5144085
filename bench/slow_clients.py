"""Slow clients and slow FHIR servers against `mkopper-cds serve` on loopback (docs/operations.md).

For a worker configuration (the arguments after ``--``, passed to ``serve``) it measures:

- ``/healthz`` latency (median and worst of 10 probes) with 200 client sockets open, half idle
  (connected, nothing sent), half sending a request's headers one byte every 0.5 s;
- discovery latency while 48 CDS calls wait on a FHIR server that does not answer.

A probe that does not answer within 5 s counts as 5 s ("timeout").

    .venv/bin/python bench/slow_clients.py -- --threads 4
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.security import test_slow_clients as slow  # noqa: E402 - after the path is set
from tests.support.service_process import ServiceProcess, http  # noqa: E402

PROBE_TIMEOUT_S = 5.0


def probe(url: str) -> float:
    started = time.perf_counter()
    try:
        status, _ = http("GET", url, timeout=PROBE_TIMEOUT_S)
    except OSError:
        return PROBE_TIMEOUT_S
    return time.perf_counter() - started if status == 200 else PROBE_TIMEOUT_S


def main(args: list[str]) -> None:
    with tempfile.TemporaryDirectory() as data:
        service = ServiceProcess(
            Path(data),
            workers=2,
            args=tuple(args),
            CDS_ALLOW_UNSIGNED="1",
            CDS_ALLOWED_FHIR_SERVERS=slow.SLOW_FHIR_URL,
            CDS_PREFETCH_BUDGET_MS="8000",
            CDS_FHIR_TIMEOUT_MS="8000",
        )
        try:
            sockets = slow.open_slow_sockets(service.port, 200)
            stop = threading.Event()
            threading.Thread(target=slow.dribble, args=(sockets, stop), daemon=True).start()
            time.sleep(1.0)
            idle = [probe(f"{service.base}/healthz") for _ in range(10)]
            stop.set()
            for sock in sockets:
                sock.close()
            threading.Thread(target=slow.SLOW_FHIR.serve_forever, daemon=True).start()
            cds = f"{service.base}/cds-services/{slow.SERVICE_ID}"
            with ThreadPoolExecutor(48) as pool:
                futures = [
                    pool.submit(http, "POST", cds, slow.body(slow.SLOW_FHIR_URL), None, 20)
                    for _ in range(48)
                ]
                time.sleep(1.5)
                discovery = [probe(f"{service.base}/cds-services") for _ in range(5)]
                slow.SlowFhir.release.set()
                for future in futures:
                    future.exception()
        finally:
            slow.SlowFhir.release.set()
            slow.SLOW_FHIR.shutdown()
            service.stop()
    print(
        json.dumps(
            {
                "args": args,
                "healthz_200_slow_p50_ms": round(statistics.median(idle) * 1000, 1),
                "healthz_200_slow_max_ms": round(max(idle) * 1000, 1),
                "discovery_48_waiting_p50_ms": round(statistics.median(discovery) * 1000, 1),
                "discovery_48_waiting_max_ms": round(max(discovery) * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else [])
