"""Batch top-k on both engines side by side: one process vs a Ray Data actor pool, same users, same graph.

    .venv/bin/python bench/ray_batch.py --users 1000000               # the figure in docs/scaling.md (tiny shape)
    .venv/bin/python bench/ray_batch.py --users 20000 --profile cpu   # MiniLM, the `make run` model's shape

Synthetic users (instructrec.data.synth: heavy-tailed activity, Zipf popularity, genre-coherent histories),
an untrained scorer of the profile's shape exported to ONNX (throughput depends on the shape, not the
weights), every user ranked by both engines, and the two top-k tables compared: item ids and ranks must be
identical, scores within 1e-5. The local engine runs one ONNX session on every core; the Ray engine a
local cluster of --ray-cpus logical CPUs (one left to Ray Data's reads and writes) with single-threaded
actors. Writes bench/results/ray_batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from instructrec.config import RuntimeConfig, load_config
from instructrec.data.split import Catalogue
from instructrec.data.synth import SynthSpec, write_synthetic
from instructrec.engine.batch import BatchJob, read_top_k, top_k_local, top_k_ray, write_users
from instructrec.engine.cluster import actor_pool_size, ray_cluster
from instructrec.serving.export import export_onnx
from instructrec.serving.recommend import user_histories, write_bundle
from instructrec.training.train import new_scorer
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]


def build_job(profile: str, data: Path, work: Path, k: int) -> tuple[BatchJob, dict]:
    cfg = load_config(profile, environ={"INSTRUCTREC_HOME": str(work / "home")})
    catalogue = Catalogue.from_items(pl.read_parquet(data / "items.parquet"))
    model, tok = new_scorer(cfg, catalogue)
    graph = export_onnx(model.eval(), tok, work / "model.onnx")
    bundle = write_bundle(work / "bundle", tok, catalogue, cfg.data.max_history, cfg.model.max_text_tokens, "synthetic")
    histories = user_histories(pl.read_parquet(data / "interactions.parquet"), catalogue)
    return BatchJob(graph, bundle, "bench", k, datetime.now(UTC)), histories


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--per-user", type=float, default=8.0, help="mean interactions per user")
    ap.add_argument("--profile", default="tiny", choices=["tiny", "cpu"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ray-cpus", type=int, default=(os.cpu_count() or 1) + 1)
    ap.add_argument("--object-store-mb", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray_batch.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = SynthSpec(users=args.users, items=args.items, interactions=int(args.users * args.per_user))
        written = write_synthetic(spec, work / "data")
        t0 = time.perf_counter()
        job, histories = build_job(args.profile, work / "data", work, args.k)
        users = write_users(histories, work / "users")
        prepared_s = time.perf_counter() - t0
        runtime = RuntimeConfig(engine="ray", cpus=args.ray_cpus, object_store_mb=args.object_store_mb)
        t0 = time.perf_counter()
        local = read_top_k(top_k_local(job, users, work / "local", runtime))
        local_s = time.perf_counter() - t0
        with ray_cluster(runtime) as resources:
            t0 = time.perf_counter()
            ray = read_top_k(top_k_ray(job, users, work / "ray", runtime))
            ray_s = time.perf_counter() - t0
        same_ids = ray.select("user_id", "rank", "item_id").equals(local.select("user_id", "rank", "item_id"))
        result = {
            "profile": args.profile,
            "data": written,
            "k": args.k,
            "cores": os.cpu_count(),
            "users_ranked": len(histories),
            "prepare_s": round(prepared_s, 1),
            "local": {"seconds": round(local_s, 1), "users_per_s": round(len(histories) / local_s)},
            "ray": {
                "seconds": round(ray_s, 1),
                "users_per_s": round(len(histories) / ray_s),
                "cluster_cpus": resources.get("CPU"),
                "actors": actor_pool_size(resources, runtime),
                "actor_threads": runtime.actor_threads,
            },
            "ray_over_local": round(local_s / ray_s, 2),
            "top_k_identical": same_ids,
            "max_score_diff": float((ray["score"] - local["score"]).abs().max() or 0.0),
        }
    print(json.dumps(result, indent=2))
    write_report(args.out, "ray_batch", result)


if __name__ == "__main__":
    main()
