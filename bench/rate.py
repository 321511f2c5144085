"""A constant-rate (open-loop) HTTP load generator, for latency at a given request rate.

wrk sends the next request when the last one is answered, so a slow answer
also delays the requests behind it and its latency is under-counted
("coordinated omission"). Here request ``i`` is due at ``start + i / rate``
and its latency is measured from that due time, whether or not a connection
was free then; a service that falls behind shows it in p99.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class RateResult:
    rate: float
    sent: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def constant_rate(
    url: str, body: bytes, rate: float, duration_s: float, connections: int = 16
) -> RateResult:
    """POST ``body`` to ``url`` at ``rate`` requests per second for ``duration_s``."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    total = max(1, int(rate * duration_s))
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter() + 0.2
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        failed = 0
        while True:
            with lock:
                i = next(counter)
            if i >= total:
                break
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                conn.request("POST", parts.path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failed += 1
            except (OSError, http.client.HTTPException):
                failed += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            mine.append(time.perf_counter() - due)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ordered = sorted(ms * 1000 for ms in latencies)
    return RateResult(
        rate=rate,
        sent=len(ordered),
        errors=errors[0],
        achieved_rps=len(ordered) / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(ordered, 0.50),
        p90_ms=percentile(ordered, 0.90),
        p99_ms=percentile(ordered, 0.99),
        max_ms=ordered[-1] if ordered else 0.0,
    )
