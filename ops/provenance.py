"""Where a benchmark's numbers came from, written into its JSON so a results page can say it beside them.

Every benchmark under bench/ ends with `write_report(path, kind, report)`; `python -m ops.results add path`
then records it for the pages (docs/results/runs/), and `make docs` renders it with its command, date and commit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def provenance(argv: list[str] | None = None) -> dict:
    """The command as typed from the repository root, when, at which commit (and whether tracked files differ
    from it), and on which machine: what a reader needs to rerun it or to doubt it."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else Path(argv[0])
    return {
        "command": " ".join([str(shown), *argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "host": f"{socket.gethostname()}, {os.cpu_count()} cores",
    }


def write_report(path: Path, kind: str, report: dict) -> dict:
    """The report with its kind and provenance first, written whole or not at all (a rename); returns what it
    wrote, so a benchmark prints the same record that a page will render."""
    record = {"kind": kind, **provenance(), **report}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return record
