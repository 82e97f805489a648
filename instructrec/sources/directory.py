"""Generic directory source: interactions.{parquet,csv} and items.{parquet,csv}.

Columns follow the canonical schema (schema.py). CSV timestamps may be ISO 8601
or epoch seconds; an optional `genres` column ('|'-separated in CSV) feeds the
attribute-based instructions (P2 and I2).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from instructrec import schema
from instructrec.errors import SourceError
from instructrec.sources.coerce import to_canonical, with_row_numbers

KIND = "directory"
ITEM_NOUN = "item"
TABLES = ("interactions", "items")
SUFFIXES = (".parquet", ".csv")


def _find(root: Path, table: str) -> Path:
    found = [root / f"{table}{suffix}" for suffix in SUFFIXES if (root / f"{table}{suffix}").exists()]
    if not found:
        raise SourceError(f"{root}: no {table}.parquet or {table}.csv")
    if len(found) > 1:
        raise SourceError(f"{root}: both {found[0].name} and {found[1].name}; keep one")
    return found[0]


def collect(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        raise SourceError(f"--data {root}: not a directory (or the name of a built-in source)")
    return {path.name: path.read_bytes() for path in (_find(root, t) for t in TABLES)}


def _load(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".csv":
            return pl.read_csv(path, infer_schema=False)
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises many types for malformed files
        raise SourceError(f"{path.name}: cannot be read as {path.suffix[1:]}: {exc}") from exc


def read(raw_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]:
    inter_path, items_path = _find(raw_dir, "interactions"), _find(raw_dir, "items")
    interactions = to_canonical(
        with_row_numbers(_load(inter_path)), schema.INTERACTIONS_SCHEMA, "interactions", inter_path.name
    )
    items = with_row_numbers(_load(items_path))
    items = to_canonical(items, {**schema.ITEMS_SCHEMA, **schema.ITEM_ATTRIBUTES}, "items", items_path.name)
    if schema.TEXT not in items.columns and schema.TITLE in items.columns:
        items = items.with_columns(pl.col(schema.TITLE).alias(schema.TEXT))
    return interactions, items, {"interactions": inter_path.name, "items": items_path.name}
