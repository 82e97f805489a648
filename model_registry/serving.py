"""Registered versions as ready-to-serve recommenders (ONNX graph + bundle + the snapshot's histories)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from instructrec.config import Config
from instructrec.recommend import BUNDLE_MANIFEST, Recommender
from instructrec.snapshot import TABLE_FILES
from model_registry import registry


class NoChampion(RuntimeError):
    pass


def load_version(cfg: Config, ref: registry.VersionRef) -> Recommender:
    """Download once per version (kept under paths.serving), then load the variant chosen for this host."""
    local = cfg.paths.serving / f"v{ref.version}"
    if not (local / registry.SERVING_ARTIFACT / BUNDLE_MANIFEST).exists():
        registry.download_serving(ref, local)
    bundle = local / registry.SERVING_ARTIFACT
    manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text())
    interactions = pl.read_parquet(snapshot_tables(cfg, manifest["snapshot_hash"]) / TABLE_FILES["interactions"])
    return Recommender.load(local / "onnx" / "model.onnx", bundle, interactions, ref.version)


def snapshot_tables(cfg: Config, snapshot_hash: str) -> Path:
    return cfg.paths.snapshots / snapshot_hash[:16] / "tables"


def load_alias(cfg: Config, alias: str) -> Recommender | None:
    ref = registry.get_alias(alias)
    return load_version(cfg, ref) if ref else None


def load_champion(cfg: Config) -> Recommender:
    rec = load_alias(cfg, registry.CHAMPION)
    if rec is None:
        raise NoChampion("no champion model yet; run `instructrec pipeline` (or `make run`) first")
    return rec
