"""What the pipeline's stages cost at 1x, 10x and 100x MovieLens-100k's size: wall time and peak memory.

    .venv/bin/python bench/scale.py                      # 1x, 10x, 100x (about 100k, 1M, 10M interactions)
    .venv/bin/python bench/scale.py --scales 1 10        # quicker

Each scale is a synthetic dataset (instructrec.data.synth) of the MovieLens family's shape: 1x ML-100k
(943 users, 1,682 items), 10x ML-1M (6,040 users, 3,706 items), 100x ML-10M (69,878 users, 10,681 items),
each with 10^k x 100,000 interactions. Every stage runs as the pipeline runs it, in this process:
synth (writing the data), ingest (hash + snapshot), validate (GX on a seeded sample of
data.validation_sample_rows + exact Polars checks of every row), prepare (split, instructions, cases),
train (the tiny profile's scorer, capped at --train-steps steps: a step's cost grows with the catalogue,
not with the interactions), evaluate (every test case, full ranking), export (ONNX) and batch (top-10 for
every user, local engine). Each scale runs in a fresh process; peak memory is that process's peak RSS while
the stage runs (sampled every 20 ms; its baseline, Python + libraries + what earlier stages still hold,
included).
The growth exponent of a stage is log(time ratio) / log(interactions ratio): 1 is linear. Beside it,
the exponent in the stage's own work (WORK): full ranking costs instructions x items, top-k for every
user costs users x items, a capped training step costs items; both grow with the data in this family.
Writes bench/results/scale.json and scale.png (log-log).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from expectations.runner import suite_parameters, validate_table  # noqa: E402
from instructrec.config import RuntimeConfig, load_config  # noqa: E402
from instructrec.data.snapshot import snapshot_raw  # noqa: E402
from instructrec.data.sources import fetch_raw, read_tables  # noqa: E402
from instructrec.data.synth import SynthSpec, write_synthetic  # noqa: E402
from instructrec.engine.batch import BatchJob, top_k_local, write_users  # noqa: E402
from instructrec.evaluation.evaluate import TorchScorer, evaluate  # noqa: E402
from instructrec.serving.export import export_onnx  # noqa: E402
from instructrec.serving.recommend import user_histories, write_bundle  # noqa: E402
from instructrec.training.prepare import prepare  # noqa: E402
from instructrec.training.train import FitRun, fit, new_scorer, representation_settings  # noqa: E402
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {1: (943, 1_682), 10: (6_040, 3_706), 100: (69_878, 10_681)}  # ML-100k, ML-1M, ML-10M users, items


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss(out: dict):
    """The highest RSS seen while the block runs."""
    peak, stop = [rss_bytes()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        out["peak_rss_gb"] = round(max(peak[0], rss_bytes()) / 1024**3, 3)


def run_scale(scale: int, work: Path, steps: int) -> dict:
    users, items = SHAPES[scale]
    cfg = load_config(
        "tiny",
        overrides={"data": {"max_users": None}, "baseline": {"enabled": False}},
        environ={"INSTRUCTREC_HOME": str(work / "home")},
    )
    stages: dict[str, dict] = {}
    state: dict = {}

    def stage(name: str, fn: Callable[[], object]) -> None:
        row: dict = {}
        with peak_rss(row):
            t0 = time.perf_counter()
            state[name] = fn()
            row["seconds"] = round(time.perf_counter() - t0, 2)
        stages[name] = row
        print(f"  {scale:>3}x {name:<9} {row['seconds']:>8.1f} s  peak {row['peak_rss_gb']:.2f} GB", flush=True)

    spec = SynthSpec(users=users, items=items, interactions=100_000 * scale)
    stage("synth", lambda: write_synthetic(spec, work / "data"))
    stage("ingest", lambda: snapshot_raw(fetch_raw(str(work / "data"), cfg.paths.downloads), cfg.paths.snapshots))

    def validate():
        snap = state["ingest"]
        tables = read_tables(snap.kind, snap.raw_dir)
        limits, gx = suite_parameters(cfg.data), work / "gx"
        checks = [
            ("items", tables.items, limits["items"]),
            (
                "interactions",
                tables.interactions,
                {**limits["interactions"], "catalogue": tables.items["item_id"].to_list()},
            ),
        ]
        for table, frame, params in checks:
            validate_table(table, frame, table, gx / table, params, cfg.data.validation_sample_rows).raise_for_failure()
        return tables

    stage("validate", validate)
    tables = state["validate"]
    stage("prepare", lambda: prepare(cfg, tables.interactions, tables.items, tables.item_noun))
    prepared = state["prepare"]

    def train():
        model, tok = new_scorer(cfg, prepared.catalogue)
        settings = replace(representation_settings(cfg), epochs=1, patience=1, select_best=False)
        n = min(len(prepared.examples), steps * settings.batch_size)
        rows = np.random.default_rng(0).choice(len(prepared.examples), size=n, replace=False)
        fit(model, tok, prepared.examples.subset(rows), settings, lambda m: {"ndcg@10": 0.0}, FitRun(progress=False))
        return model, tok

    stage("train", train)
    model, tok = state["train"]
    ids = prepared.catalogue.item_ids
    stage(
        "evaluate",
        lambda: evaluate(TorchScorer("scale", model, tok, ids, ids), prepared.test_cases, prepared.split),
    )

    def export():
        graph = export_onnx(model.eval(), tok, work / "model.onnx")
        bundle = write_bundle(
            work / "bundle", tok, prepared.catalogue, cfg.data.max_history, cfg.model.max_text_tokens, "scale"
        )
        return graph, bundle

    stage("export", export)
    graph, bundle = state["export"]

    def batch():
        histories = user_histories(tables.interactions, prepared.catalogue)
        job = BatchJob(graph, bundle, "scale", 10, datetime.now(UTC))
        return top_k_local(job, write_users(histories, work / "users"), work / "top10", RuntimeConfig())

    stage("batch", batch)
    return {
        "scale": scale,
        "users": users,
        "items": items,
        "interactions": state["synth"]["interactions"],
        "train_steps": steps,
        "eval_cases": sum(len(c.users) for c in prepared.test_cases.values()),
        "stages": stages,
    }


# what each stage's cost is proportional to, from a scale's row (the rest: interactions)
WORK: dict[str, Callable[[dict], float]] = {
    "train": lambda r: r["train_steps"] * r["items"],
    "evaluate": lambda r: r["eval_cases"] * r["items"],
    "export": lambda r: r["items"],
    "batch": lambda r: r["users"] * r["items"],
}


def work(stage: str, row: dict) -> float:
    return WORK.get(stage, lambda r: r["interactions"])(row)


def growth(results: list[dict]) -> dict:
    """Per stage and pair of neighbouring scales: the time ratio, its exponent in the interactions' ratio
    and in the stage's work ratio."""
    out: dict = {}
    for a, b in zip(results, results[1:]):
        n = b["interactions"] / a["interactions"]
        for name, row in b["stages"].items():
            ratio = max(row["seconds"], 1e-2) / max(a["stages"][name]["seconds"], 1e-2)  # the timer's resolution
            out.setdefault(name, {})[f"{b['scale']}x/{a['scale']}x"] = {
                "time_ratio": round(ratio, 2),
                "exponent": round(math.log(ratio) / math.log(n), 2),
                "work_exponent": round(math.log(ratio) / math.log(work(name, b) / work(name, a)), 2),
                "memory_ratio": round(row["peak_rss_gb"] / max(a["stages"][name]["peak_rss_gb"], 1e-3), 2),
            }
    return out


def plot(results: list[dict], target: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["interactions"] for r in results]
    for name in results[0]["stages"]:
        ax1.plot(x, [max(r["stages"][name]["seconds"], 1e-2) for r in results], marker="o", label=name)
        ax2.plot(x, [r["stages"][name]["peak_rss_gb"] for r in results], marker="o", label=name)
    ax1.plot(x, [results[0]["stages"]["prepare"]["seconds"] * v / x[0] for v in x], "k:", label="linear")
    ax1.set(xscale="log", yscale="log", xlabel="interactions", ylabel="wall time (s)", title="time per stage")
    ax2.set(xscale="log", yscale="log", xlabel="interactions", ylabel="peak RSS (GB)", title="peak memory per stage")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def measured_alone(scale: int, steps: int) -> dict:
    """One scale in a fresh process, so its peak memory is its own (not what earlier scales left behind)."""
    with tempfile.TemporaryDirectory() as tmp:
        row = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--scales", str(scale), "--train-steps", str(steps), "--one", str(row)]
        subprocess.run(cmd, check=True)
        return json.loads(row.read_text())


def print_summary(report: dict) -> None:
    print(f"{'stage':<9} {'exponent in interactions':>26} {'exponent in its work':>22}")
    for name, pairs in report["growth"].items():
        by_n = ", ".join(f"{k} {v['exponent']:+.2f}" for k, v in pairs.items())
        by_work = ", ".join(f"{v['work_exponent']:+.2f}" for v in pairs.values())
        print(f"{name:<9} {by_n:>26} {by_work:>22}")
    exponents = [(v["exponent"], k) for k, pairs in report["growth"].items() for v in pairs.values()]
    if exponents:
        worst = max(exponents)
        print(f"worst exponent in interactions: {worst[0]:+.2f} ({worst[1]}); target <= 1")
    print(f"peak RSS: {report['peak_rss_gb']:.2f} GB; target < 8 GB at the largest scale")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100], choices=sorted(SHAPES))
    ap.add_argument("--train-steps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # run the one scale here, its row to this file
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            args.one.write_text(json.dumps(run_scale(args.scales[0], Path(tmp), args.train_steps)))
        return
    results = [measured_alone(scale, args.train_steps) for scale in sorted(args.scales)]
    report = {
        "machine": {"cores": os.cpu_count()},
        "note": f"train capped at {args.train_steps} steps of the tiny profile's batch; other stages run in full",
        "results": results,
        "growth": growth(results),
        "peak_rss_gb": max(row["peak_rss_gb"] for r in results for row in r["stages"].values()),
    }
    print_summary(report)
    write_report(args.out, "scale", report)
    if len(results) > 1:
        plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
