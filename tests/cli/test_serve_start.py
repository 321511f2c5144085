"""What `mkopper-cds serve` does before the workers start: the migration in a child process,
and glibc's malloc tuned (docs/operations.md, worker memory)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from plugin.cli import serve

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env: str) -> dict[str, object]:
    """``code`` in a fresh interpreter (so that nothing else has loaded alembic); its last
    line of output, read as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    answer: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return answer


def test_the_migration_runs_in_a_child_and_alembic_stays_out_of_the_parent(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cds.sqlite3"
    answer = _run(
        "import json, sys\n"
        "from plugin.cli.serve import migrate_in_child\n"
        f"status = migrate_in_child({f'sqlite:///{db}'!r})\n"
        "print(json.dumps({'status': status, 'alembic': 'alembic' in sys.modules}))"
    )
    assert answer == {"status": 0, "alembic": False}
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"feedback", "suppressions", "issued_counts"} <= tables
    assert revision.startswith("0005")


def test_a_failed_migration_is_a_nonzero_status(tmp_path: Path) -> None:
    # A database in a directory that does not exist cannot be created.
    url = f"sqlite:///{tmp_path / 'missing' / 'cds.sqlite3'}"
    assert serve.migrate_in_child(url) == 1


def test_serve_stops_before_any_worker_when_the_migration_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "plugin.cli.serve", "--port", "1"],
        cwd=ROOT,
        env=os.environ
        | {
            "CDS_DATA_DIR": str(data),
            "CDS_ALLOW_UNSIGNED": "1",
            "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'cds.sqlite3'}",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "the database migration failed" in out.stderr
    assert "Booting worker" not in out.stderr


def test_malloc_is_tuned_unless_the_operator_chose() -> None:
    script = (
        "import json\n"
        "from plugin.cli.serve import tune_malloc\n"
        "print(json.dumps({'set': tune_malloc()}))"
    )
    tuned = _run(script)
    chosen = _run(script, MALLOC_ARENA_MAX="4", MALLOC_TRIM_THRESHOLD_="131072")
    # This machine's libc is glibc.
    assert tuned == {
        "set": ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
    }
    assert chosen == {"set": ["MALLOC_MMAP_THRESHOLD_"]}
