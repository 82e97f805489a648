"""What `prepare` costs (the split, the training examples, the evaluation cases), and a digest of all it returns.

    .venv/bin/python bench/prepare.py                               # ML-100k on the cpu profile
    .venv/bin/python bench/prepare.py --scale 100                   # synthetic, 10M interactions, every user
    .venv/bin/python bench/prepare.py --scale 10 --against HEAD~1   # that revision's code beside this one

Each side runs in a fresh process on the same data (written once, first). With --against, the other revision is
checked out in a temporary worktree and imported ahead of this one, this file driving both; the table gives each
part's seconds and the ratio, and says whether the two digests agree. The digest hashes content (array bytes,
dtypes and shapes, the text of every string), not object identity: a faster prepare must give the same examples and
cases, to the byte, for the same seed. Synthetic scales use the tiny profile (all users kept), as bench/scale.py.
Writes bench/results/prepare.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ops.provenance import write_report

if TYPE_CHECKING:
    from instructrec.config import Profile

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {1: (943, 1_682), 10: (6_040, 3_706), 100: (69_878, 10_681)}  # as bench/scale.py
PARTS = ("training_examples", "build_cases")


def digest(obj: object) -> str:
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, x) -> None:
    import numpy as np

    if isinstance(x, np.ndarray):
        h.update(f"{x.dtype}{x.shape}".encode())
        h.update("\x1f".join(map(str, x.ravel().tolist())).encode() if x.dtype == object else x.tobytes())
    elif isinstance(x, list | tuple):
        h.update(f"[{len(x)}".encode())
        for v in x:
            _feed(h, v)
    elif isinstance(x, dict):
        for k in sorted(x):
            h.update(f"{k}=".encode())
            _feed(h, x[k])
    elif is_dataclass(x):
        for f in fields(x):
            if f.name != "catalogue":  # the input, not an output
                h.update(f.name.encode())
                _feed(h, getattr(x, f.name))
    else:
        h.update(repr(x).encode())


def measure(source: str, profile: str, home: Path) -> dict:
    """One prepare in this process: total and per-part seconds (the parts timed where prepare calls them)."""
    import instructrec.training.prepare as prep
    from instructrec.config import load_config
    from instructrec.data.snapshot import snapshot_raw
    from instructrec.data.sources import fetch_raw, read_tables

    overrides = {"data": {"max_users": None}} if profile == "tiny" else None
    cfg = load_config(cast("Profile", profile), overrides=overrides, environ={"INSTRUCTREC_HOME": str(home)})
    snap = snapshot_raw(fetch_raw(source, cfg.paths.downloads), cfg.paths.snapshots)
    tables = read_tables(snap.kind, snap.raw_dir)
    spent: dict[str, float] = dict.fromkeys(PARTS, 0.0)
    for name in PARTS:
        setattr(prep, name, _timed(getattr(prep, name), name, spent))
    t0 = time.perf_counter()
    prepared = prep.prepare(cfg, tables.interactions, tables.items, tables.item_noun)
    total = time.perf_counter() - t0
    return {
        "seconds": round(total, 2),
        "parts": {
            "split and checks": round(total - sum(spent.values()), 2),
            **{k: round(v, 2) for k, v in spent.items()},
        },
        "interactions": tables.interactions.height,
        "examples": prepared.examples.n_examples,
        "digest": digest([prepared.split, prepared.examples, prepared.valid_cases, prepared.test_cases]),
    }


def _timed(fn, name: str, spent: dict[str, float]):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0

    return wrapper


def run_side(tree: Path, source: str, profile: str, work: Path) -> dict:
    """A fresh process importing the library from `tree` (this checkout or another revision's worktree)."""
    out = work / f"{tree.name}.json"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--one", str(out), "--source", source, "--profile", profile]
    subprocess.run(cmd, check=True, env=env, cwd=tree)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, choices=sorted(SHAPES), help="synthetic data at this multiple of ML-100k")
    ap.add_argument("--against", help="a git revision to measure beside this checkout")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prepare.json")
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # one side, in this process, its row to this file
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as home:
            args.one.write_text(json.dumps(measure(args.source, args.profile, Path(home))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source, profile = "movielens-100k", "cpu"
        if args.scale:
            from instructrec.data.synth import SynthSpec, write_synthetic

            users, items = SHAPES[args.scale]
            write_synthetic(SynthSpec(users=users, items=items, interactions=100_000 * args.scale), work / "data")
            source, profile = str(work / "data"), "tiny"
        here = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
        sides = {here: run_side(ROOT, source, profile, work)}
        if args.against:
            tree = work / "against"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), args.against], check=True
            )
            try:
                sides[args.against] = run_side(tree, source, profile, work)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    report = {"data": f"synthetic {args.scale}x" if args.scale else source, "cores": os.cpu_count(), "sides": sides}
    print_table(report)
    write_report(args.out, "prepare", report)


def print_table(report: dict) -> None:
    sides = report["sides"]
    first = next(iter(sides.values()))
    print(
        f"prepare on {report['data']}: {first['interactions']:,} interactions, {first['examples']:,} training examples"
    )
    names = list(sides)
    print(f"{'part':<20}" + "".join(f"{n:>18}" for n in names) + ("   other/this" if len(names) == 2 else ""))
    for part in ["total", *first["parts"]]:
        values = [s["seconds"] if part == "total" else s["parts"][part] for s in sides.values()]
        ratio = f"   {values[1] / values[0]:.2f}x" if len(values) == 2 and values[0] else ""
        print(f"{part:<20}" + "".join(f"{v:>17.2f}s" for v in values) + ratio)
    digests = {s["digest"] for s in sides.values()}
    verdict = "" if len(sides) == 1 else ": identical on both sides" if len(digests) == 1 else ": DIFFERS"
    print(f"digest {first['digest'][:16]}{verdict}")


if __name__ == "__main__":
    main()
