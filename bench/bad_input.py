"""Bad input, tried as a new user would: each class through `instructrec pipeline --profile tiny --data DIR`.

Prints, per class, the exit code, the seconds until the command returned and the first line of its error, and
writes bench/results/bad_input.json (the table in docs/how-to/troubleshooting.md). A benchmark: it asserts nothing. All cases
share one home, whose Prefect database is migrated by a warm-up run first, as on a machine in use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from tests.conftest import write_dataset

ROOT = Path(__file__).resolve().parents[1]


def _edit(name: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Path], list[str]]:
    def apply(root: Path) -> list[str]:
        path = root / f"{name}.csv"
        change(pl.read_csv(path, infer_schema=False)).write_csv(path)
        return []

    return apply


def _latin1(root: Path) -> list[str]:
    text = (root / "items.csv").read_text().replace("Story 4", "Café Story 4", 1)
    (root / "items.csv").write_bytes(text.encode("latin-1"))
    return []


def _missing(root: Path) -> list[str]:
    (root / "items.csv").unlink()
    return []


CASES: dict[str, Callable[[Path], list[str]]] = {
    "one title of 10 MB": _edit(
        "items",
        lambda d: d.with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("x" * 10_000_000)).otherwise("title").alias("title")
        ),
    ),
    "too little data (no user with 3 interactions)": _edit(
        "interactions", lambda d: d.group_by("user_id", maintain_order=True).head(2)
    ),
    "missing column (timestamp)": _edit("interactions", lambda d: d.drop("timestamp")),
    "unparseable timestamp": _edit(
        "interactions",
        lambda d: d.with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("yesterday")).otherwise("timestamp").alias("timestamp")
        ),
    ),
    "interaction with an unknown item": _edit(
        "interactions",
        lambda d: d.with_columns(
            pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("no-such-item")).otherwise("item_id").alias("item_id")
        ),
    ),
    "duplicate item ids": _edit("items", lambda d: pl.concat([d, d.head(2)])),
    "Latin-1 text": _latin1,
    "file over data.max_file_bytes (set to 10 kB)": lambda root: ["--set", "data.max_file_bytes=10000"],
    "table over data.max_rows (set to 100)": lambda root: ["--set", "data.max_rows=100"],
    "missing items file": _missing,
    "no such directory": lambda root: ["--data", str(root / "nowhere")],
}


def run_case(home: Path, data: Path, extra: list[str]) -> dict:
    env = {**os.environ, "INSTRUCTREC_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "ops.cli", "pipeline", "--profile", "tiny", "--data", str(data), *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    return {"exit": out.returncode, "seconds": round(seconds, 1), "message": (errors or ["(none)"])[0][:300]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bad_input.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
        home = Path(tmp) / "home"
        warm = run_case(home, Path(tmp) / "nowhere", [])
        print(f"warm-up (migrates the home's Prefect database): {warm['seconds']} s")
        rows = {}
        for name, make in CASES.items():
            data = write_dataset(Path(tmp) / name.replace(" ", "-").replace("/", "-"))
            extra = make(data)
            if "--data" in extra:
                data, extra = Path(extra[1]), extra[2:]
            rows[name] = run_case(home, data, extra)
            r = rows[name]
            print(f"{name:<48} exit {r['exit']}  {r['seconds']:>5.1f} s  {r['message'][:110]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": "tiny", "cases": rows}, indent=2))
    print(f"wrote {args.out}; slowest refusal {max(r['seconds'] for r in rows.values()):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
