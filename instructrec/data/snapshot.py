"""Raw input kept by content hash before anything reads or changes it.

Layout: snapshots/<hash16>/raw/<files>, manifest.json, and tables/*.parquet
once the input has passed validation. Re-ingesting identical input finds the
same directory and writes nothing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from instructrec.data.sources import RawInput, Tables
from instructrec.io import atomic_dir, content_hash, write_parquet

MANIFEST = "manifest.json"
TABLE_FILES = {"interactions": "interactions.parquet", "items": "items.parquet"}


@dataclass(frozen=True)
class Snapshot:
    hash: str
    root: Path
    kind: str
    origin: str
    created: bool  # False when identical input had been ingested before

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def short(self) -> str:
        return self.hash[:12]

    def has_tables(self) -> bool:
        return all((self.tables_dir / f).exists() for f in TABLE_FILES.values())


def snapshot_raw(raw: RawInput, snapshots: Path) -> Snapshot:
    digest = content_hash(raw.files)
    root = snapshots / digest[:16]
    if (root / MANIFEST).exists():
        return Snapshot(digest, root, raw.kind, raw.origin, created=False)
    with atomic_dir(root) as tmp:
        (tmp / "raw").mkdir()
        for name, content in raw.files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, tmp / "raw" / name)  # streamed; a copy, so later edits of the original
            else:  # cannot change what was kept
                (tmp / "raw" / name).write_bytes(content)
        manifest = {
            "hash": digest,
            "kind": raw.kind,
            "origin": raw.origin,
            "files": {name: (tmp / "raw" / name).stat().st_size for name in raw.files},
            "created_at": datetime.now(UTC).isoformat(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Snapshot(digest, root, raw.kind, raw.origin, created=True)


def load_snapshot(root: Path) -> Snapshot:
    manifest = json.loads((root / MANIFEST).read_text())
    return Snapshot(manifest["hash"], root, manifest["kind"], manifest["origin"], created=False)


def write_tables(snapshot: Snapshot, tables: Tables) -> None:
    """Keep the validated canonical tables (no-op when already there), source row numbers included:
    they order same-second events (split.chronological)."""
    if snapshot.has_tables():
        return
    write_parquet(tables.interactions, snapshot.tables_dir / TABLE_FILES["interactions"])
    write_parquet(tables.items, snapshot.tables_dir / TABLE_FILES["items"])


def read_table(snapshot: Snapshot, table: str) -> pl.DataFrame:
    return pl.read_parquet(snapshot.tables_dir / TABLE_FILES[table])
