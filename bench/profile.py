"""Profile one service call in-process with pyinstrument, on a body the benchmark saved.

    .venv/bin/python bench/run.py --short            # writes var/bench-bodies/*.json
    .venv/bin/python bench/profile.py var/bench-bodies/cards.json [--calls 200]

Runs the real app (guideline content, SQLite in a temporary directory) through
Flask's test client, so the profile shows the service's own work without the
HTTP server, and prints pyinstrument's call tree.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyinstrument import Profiler

from plugin import create_app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("body", type=Path, help="a request body saved by bench/run.py")
    parser.add_argument("--service", default="mkopper-patient-view")
    parser.add_argument("--calls", type=int, default=200)
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
        profiler = Profiler(interval=0.0005)
        with profiler:
            for _ in range(args.calls):
                client.post(url, json=body)
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        app.extensions["cds_store"].engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
