"""Registered versions as ready-to-serve recommenders (ONNX graph + bundle + the snapshot's histories)."""

from __future__ import annotations

import json

from instructrec.config import Config
from instructrec.recommend import BUNDLE_MANIFEST, Recommender
from instructrec.snapshot import load_snapshot, read_table
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
    snapshot = load_snapshot(cfg.paths.snapshots / manifest["snapshot_hash"][:16])
    interactions = read_table(snapshot, "interactions")
    return Recommender.load(
        local / "onnx" / "model.onnx", bundle, interactions, ref.version, cfg.serve.onnx_threads or None
    )


def load_champion(cfg: Config) -> Recommender:
    ref = registry.get_alias(registry.CHAMPION)
    if ref is None:
        raise NoChampion("no champion model yet; run `instructrec pipeline` (or `make run`) first")
    return load_version(cfg, ref)
