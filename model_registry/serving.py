"""Registered versions as ready-to-serve recommenders (ONNX graph + bundle + the snapshot's histories)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from instructrec.config import Config
from instructrec.data.snapshot import Snapshot, load_snapshot, read_table
from instructrec.serving.recommend import BUNDLE_MANIFEST, LoadOptions, Recommender
from model_registry import registry


class NoChampion(RuntimeError):
    pass


@dataclass(frozen=True)
class ServingFiles:
    """A registered version on local disk: its fp32 graph, its bundle, and the snapshot it was trained on."""

    onnx_file: Path
    bundle: Path
    version: str
    snapshot: Snapshot

    def interactions(self) -> pl.DataFrame:
        return read_table(self.snapshot, "interactions")


def fetch_version(cfg: Config, ref: registry.VersionRef) -> ServingFiles:
    """Download once per version (kept under paths.serving)."""
    local = cfg.paths.serving / f"v{ref.version}"
    if not (local / registry.SERVING_ARTIFACT / BUNDLE_MANIFEST).exists():
        registry.download_serving(ref, local)
    bundle = local / registry.SERVING_ARTIFACT
    manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text())
    snapshot = load_snapshot(cfg.paths.snapshots / manifest["snapshot_hash"][:16])
    return ServingFiles(local / "onnx" / "model.onnx", bundle, ref.version, snapshot)


def load_version(cfg: Config, ref: registry.VersionRef, batched: bool = False) -> Recommender:
    """The version as a recommender, on the variant chosen for this host; `batched`: as the service runs it,
    concurrent requests sharing scoring calls per serve.batch_requests / batch_wait_ms."""
    files = fetch_version(cfg, ref)
    return Recommender.load(
        files.onnx_file, files.bundle, files.interactions(), files.version, LoadOptions.serving(cfg.serve, batched)
    )


def champion_ref() -> registry.VersionRef:
    ref = registry.get_alias(registry.CHAMPION)
    if ref is None:
        raise NoChampion("no champion model yet; run `instructrec pipeline` (or `make run`) first")
    return ref


def load_champion(cfg: Config) -> Recommender:
    return load_version(cfg, champion_ref())
