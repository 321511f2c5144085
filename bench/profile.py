"""Profile one service call in-process with pyinstrument, on a body the benchmark saved.

    .venv/bin/python bench/run.py --short            # writes var/bench-bodies/*.json
    .venv/bin/python bench/profile.py var/bench-bodies/cards.json [--calls 200]

Runs the real app (guideline content, SQLite in a temporary directory) through
Flask's test client, so the profile shows the service's own work without the
HTTP server, and prints pyinstrument's call tree. pyinstrument samples wall-clock
time, so on a machine that other work keeps busy its shares include the time the
process waited for a core; ``--cpu`` counts CPU time instead (cProfile with the
process clock: exact call counts, each call's own overhead added) and prints the
CPU milliseconds per call of the functions that cost most, cumulative.

    .venv/bin/python bench/profile.py var/bench-bodies/nocard.json --cpu [--top 40]
"""

from __future__ import annotations

import sys
from pathlib import Path

# The script's own folder comes first on the path, and this file's name would hide the
# standard library's ``profile`` module, which cProfile imports: the project root instead.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402 - after the path is set
import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from pyinstrument import Profiler  # noqa: E402

from plugin import create_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("body", type=Path, help="a request body saved by bench/run.py")
    parser.add_argument("--service", default="mkopper-patient-view")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--cpu", action="store_true", help="CPU time (cProfile), not wall time")
    parser.add_argument("--top", type=int, default=40, help="functions shown with --cpu")
    args = parser.parse_args()
    body = json.loads(args.body.read_text(encoding="utf-8"))
    body.pop("fhirServer", None)
    body.pop("fhirAuthorization", None)
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"CDS_DATA_DIR": tmp, "CDS_ALLOW_UNSIGNED": "1"})
        client = app.test_client()
        url = f"/cds-services/{args.service}"
        first = client.post(url, json=body)
        if first.status_code != 200:
            print(f"the call answered {first.status_code}: {first.get_data(as_text=True)[:300]}")
            return 1
        raw = json.dumps(body).encode()
        # As `mkopper-cds serve` does before the workers fork: what start-up built stays out
        # of the collector's scans (without this, a large body's parse pays for scanning it).
        gc.collect()
        gc.freeze()
        if args.cpu:
            started = time.process_time()
            for _ in range(args.calls):
                client.post(url, data=raw, content_type="application/json")
            plain = (time.process_time() - started) * 1000 / args.calls
            cpu = cProfile.Profile(time.process_time)
            cpu.enable()
            for _ in range(args.calls):
                client.post(url, data=raw, content_type="application/json")
            cpu.disable()
            out = io.StringIO()
            stats = pstats.Stats(cpu, stream=out)
            total = stats.total_tt  # type: ignore[attr-defined]
            print(
                f"{plain:.3f} ms CPU per call without the profiler, "
                f"{total * 1000 / args.calls:.3f} ms with it ({args.calls} calls)"
            )
            print(f"{'cumulative ms/call':>18} {'own ms/call':>12} {'calls/call':>10}  function")
            rows = sorted(stats.stats.items(), key=lambda item: -item[1][3])  # type: ignore[attr-defined]
            for (path, line, name), (_cc, calls, own, cumulative, _) in rows[: args.top]:
                where = f"{Path(path).name}:{line}({name})" if line else name
                print(
                    f"{cumulative * 1000 / args.calls:18.3f} {own * 1000 / args.calls:12.3f} "
                    f"{calls / args.calls:10.1f}  {where}"
                )
        else:
            profiler = Profiler(interval=0.0005)
            with profiler:
                for _ in range(args.calls):
                    client.post(url, data=raw, content_type="application/json")
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        app.extensions["cds_store"].engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
