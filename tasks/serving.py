"""Serving-side tasks: the champion's ONNX scorer, and batch top-k for every user (one process or Ray)."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import tracking
from instructrec.config import Config
from instructrec.engine.batch import BatchJob, top_k_users, write_users
from instructrec.serving.recommend import read_catalogue, user_histories
from model_registry.serving import NoChampion, champion_ref, fetch_version, load_champion

BATCH_EXPERIMENT = "instructrec-batch"


@task(name="batch-top-k", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def batch_top_k(cfg: Config, k: int) -> Path:
    """Top-k for every user from the champion (runtime.engine: this process or Ray), as Parquet parts,
    recorded as an MLflow run."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    tracking.configure(cfg)
    files = fetch_version(cfg, champion_ref())
    stamp = datetime.now(UTC)
    target = cfg.paths.home / "batch" / f"top{k}-v{files.version}-{stamp:%Y%m%dT%H%M%S}"
    histories = user_histories(files.interactions(), read_catalogue(files.bundle))
    users = write_users(histories, target.with_name(f".{target.name}.users"))
    loaded = time.perf_counter()
    job = BatchJob(files.onnx_file, files.bundle, files.version, k, stamp)
    try:
        top_k_users(job, users, target, cfg.runtime)
    finally:
        shutil.rmtree(users, ignore_errors=True)
    scored = time.perf_counter()
    summary = pl.scan_parquet(target / "*.parquet").select(pl.len().alias("rows"), pl.col("variant").first()).collect()
    variant = summary["variant"][0] or "fp32"
    tracking.record_run(
        tracking.experiment_id(cfg, BATCH_EXPERIMENT, "batch"),
        f"top{k}-v{files.version}",
        {"model_version": files.version, "variant": variant, "engine": cfg.runtime.engine, **tracking.code_version()},
        {
            "users": len(histories),
            "rows": summary["rows"][0],
            "load_s": loaded - t0,
            "score_s": scored - loaded,
            "users_per_s": len(histories) / (scored - loaded),
        },
        {"output": target},
    )
    logger.info(
        "top-%d for %d users from v%s (%s, engine %s) in %.2f s -> %s",
        k,
        len(histories),
        files.version,
        variant,
        cfg.runtime.engine,
        scored - loaded,
        target,
    )
    return target


__all__ = ["NoChampion", "batch_top_k", "load_champion"]
