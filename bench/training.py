"""Training throughput (examples/s) per profile, on MovieLens-100k examples.

    .venv/bin/python bench/training.py                 # tiny and cpu (and gpu where CUDA is usable)
    .venv/bin/python bench/training.py --steps 60

Each profile trains `--steps` batches of its own batch size with its own model
(tiny BERT tuned end to end; MiniLM frozen with cached text features; MiniLM
tuned end to end with bf16 autocast on a GPU). Then the full-softmax loss alone, side by
side at ML-1M's shape (3,706 items, 200-item windows of 128 users): `log_softmax` + gather
vs the fused, chunked `catalogue_log_prob` in fp32 and with bf16 products.
Writes bench/results/training.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from instructrec.config import load_config
from instructrec.data.snapshot import snapshot_raw
from instructrec.data.sources import fetch_raw, read_tables
from instructrec.models.model import bf16_capable, catalogue_log_prob
from instructrec.training.prepare import prepare
from instructrec.training.train import FitRun, fit, new_scorer, representation_settings
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]


def measure(profile: str, steps: int, home: Path) -> dict:
    cfg = load_config(
        profile,
        overrides={"train": {"epochs": 1}, "data": {"max_users": None}, "progress": False},
        environ={"INSTRUCTREC_HOME": str(home)},
    )
    snap = snapshot_raw(fetch_raw(cfg.data.source, cfg.paths.downloads), cfg.paths.snapshots)
    tables = read_tables(snap.kind, snap.raw_dir)
    prepared = prepare(cfg, tables.interactions, tables.items, tables.item_noun)
    model, tok = new_scorer(cfg, prepared.catalogue)
    n = min(len(prepared.examples), steps * cfg.train.batch_size)  # batches are history windows
    rows = np.random.default_rng(0).choice(len(prepared.examples), size=n, replace=False)
    result = fit(
        model,
        tok,
        prepared.examples.subset(rows),
        representation_settings(cfg),
        validate=lambda m: {"ndcg@10": 0.0},
        run=FitRun(progress=False),
    )
    return {
        "profile": profile,
        "device": cfg.train.device,
        "batch_size": cfg.train.batch_size,
        "train_bert": cfg.model.train_bert,
        "steps": steps,
        "examples_per_s": result.examples_per_s,
    }


def _seconds_per_step(step, repeats: int) -> float:
    step()  # warm-up: allocations, kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def loss_kernels(rows: int = 25_600, dim: int = 64, items: int = 3_706, repeats: int = 5) -> list[dict]:
    """Forward + backward of the catalogue softmax loss, each way, on the same random inputs."""
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(rows, dim, generator=gen).requires_grad_()
    table = (0.1 * torch.randn(items, dim, generator=gen)).requires_grad_()
    bias = torch.zeros(items, requires_grad=True)
    target = torch.randint(0, items, (rows,), generator=gen)

    def reference() -> None:
        logp = F.log_softmax(query @ table.T + bias, dim=-1).gather(1, target[:, None])
        (-logp.mean()).backward()

    def fused(low_precision: bool):
        return lambda: (-catalogue_log_prob(query, table, target, bias, low_precision).mean()).backward()

    ways = [("log_softmax + gather, fp32", reference), ("catalogue_log_prob, fp32", fused(False))]
    if bf16_capable(torch.device("cpu")):
        ways.append(("catalogue_log_prob, bf16 products", fused(True)))
    base = _seconds_per_step(reference, repeats)
    out = []
    for name, step in ways:
        seconds = base if step is reference else _seconds_per_step(step, repeats)
        out.append(
            {"loss": name, "rows": rows, "items": items, "ms_per_step": 1e3 * seconds, "speedup": base / seconds}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--home", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-train-")))
    args = parser.parse_args()
    profiles = ["tiny", "cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    rows = [measure(p, args.steps, args.home) for p in profiles]
    print(f"\n{'profile':<8}{'device':<8}{'windows/batch':>14}{'BERT tuned':>12}{'examples/s':>12}")
    for r in rows:
        print(
            f"{r['profile']:<8}{r['device']:<8}{r['batch_size']:>14}{str(r['train_bert']):>12}{r['examples_per_s']:>12.0f}"
        )
    if "gpu" not in profiles:
        print("(gpu profile not measured: torch sees no CUDA device on this host)")
    kernels = loss_kernels()
    print(f"\nfull-softmax loss, forward + backward, {kernels[0]['rows']:,} rows x {kernels[0]['items']:,} items (CPU)")
    for k in kernels:
        print(f"  {k['loss']:<36}{k['ms_per_step']:>9.1f} ms{k['speedup']:>7.2f}x")
    if len(kernels) < 3:
        print("  (bf16 products not measured: this CPU has no bf16 units)")
    report = {"steps": args.steps, "profiles": rows, "loss_kernels": kernels}
    write_report(args.out / "training.json", "training", report)


if __name__ == "__main__":
    main()
