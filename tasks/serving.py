"""Serving-side tasks: the champion's ONNX scorer, and batch top-k for every user."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import tracking
from instructrec.config import Config
from instructrec.io import write_parquet
from instructrec.recommend import top_k_all
from model_registry.serving import NoChampion, load_champion

BATCH_EXPERIMENT = "instructrec-batch"


@task(name="batch-top-k", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def batch_top_k(cfg: Config, k: int) -> Path:
    """Top-k for every user from the champion, as Parquet, recorded as an MLflow run."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    tracking.configure(cfg)
    rec = load_champion(cfg)
    loaded = time.perf_counter()
    table = top_k_all(rec, k)
    scored = time.perf_counter()
    stamp = datetime.now(UTC)
    table = table.with_columns(
        pl.lit(rec.version).alias("model_version"),
        pl.lit(rec.variant).alias("variant"),
        pl.lit(stamp).alias("generated_at"),
    )
    target = write_parquet(table, cfg.paths.home / "batch" / f"top{k}-v{rec.version}-{stamp:%Y%m%dT%H%M%S}.parquet")
    users = table["user_id"].n_unique()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(BATCH_EXPERIMENT) or client.get_experiment(
        client.create_experiment(
            BATCH_EXPERIMENT, artifact_location=(cfg.paths.home / tracking.ARTIFACTS_DIR / "batch").resolve().as_uri()
        )
    )
    run = client.create_run(
        exp.experiment_id,
        run_name=f"top{k}-v{rec.version}",
        tags={"model_version": rec.version, "variant": rec.variant, "provider": rec.session.provider},
    )
    tracking.log_metrics(
        run.info.run_id,
        {
            "users": users,
            "rows": table.height,
            "load_s": loaded - t0,
            "score_s": scored - loaded,
            "users_per_s": users / (scored - loaded),
        },
    )
    client.log_param(run.info.run_id, "output", str(target))
    client.set_terminated(run.info.run_id, "FINISHED")
    logger.info(
        "top-%d for %d users from v%s (%s on %s) in %.2f s -> %s",
        k,
        users,
        rec.version,
        rec.variant,
        rec.session.provider,
        scored - loaded,
        target,
    )
    return target


__all__ = ["NoChampion", "batch_top_k", "load_champion"]
