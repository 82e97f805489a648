"""Batch inference flow: top-k for every user from the champion's best variant for this host."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from instructrec.config import Profile, load_config
from tasks.serving import batch_top_k


@flow(name="instructrec-batch-inference", flow_run_name="batch-top{k}", log_prints=True)
def batch_inference(k: int = 10, profile: Profile = "cpu", overrides: dict | None = None) -> Path:
    """overrides: config values, e.g. {"runtime": {"engine": "ray"}} for the Ray Data actor pool."""
    return batch_top_k(load_config(profile, overrides=overrides), k)
