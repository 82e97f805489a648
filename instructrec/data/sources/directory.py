"""Generic directory source: interactions.{parquet,csv,tsv} and items.{parquet,csv,tsv}.

Columns follow the canonical schema (schema.py). CSV timestamps may be ISO 8601
or epoch seconds; an optional `genres` column ('|'-separated in CSV) feeds the
attribute-based instructions (P2 and I2).

Text files as people export them: a UTF-8 byte-order mark is accepted, a tab-separated
header selects tabs (also in a file named .csv), and text that is not UTF-8 (Latin-1 or
Windows-1252 exports) is refused with the line and the command that converts it.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import polars as pl

from instructrec.data import schema
from instructrec.data.sources.coerce import to_canonical, with_row_numbers
from instructrec.errors import DataValidationError, SourceError, Violation

KIND = "directory"
ITEM_NOUN = "item"
TABLES = ("interactions", "items")
SUFFIXES = (".parquet", ".csv", ".tsv")


def _find(root: Path, table: str) -> Path:
    found = [root / f"{table}{suffix}" for suffix in SUFFIXES if (root / f"{table}{suffix}").exists()]
    if not found:
        raise SourceError(f"{root}: no {table}.parquet, {table}.csv or {table}.tsv")
    if len(found) > 1:
        raise SourceError(f"{root}: both {found[0].name} and {found[1].name}; keep one")
    return found[0]


def collect(root: Path, max_file_bytes: int | None = None) -> dict[str, bytes | Path]:
    """The tables' files (paths: hashed and copied in blocks, never held whole); a file over the size limit is
    refused from its size alone, before it is read."""
    if not root.is_dir():
        raise SourceError(f"--data {root}: not a directory (or the name of a built-in source)")
    paths = [_find(root, t) for t in TABLES]
    for table, path in zip(TABLES, paths, strict=True):
        size = path.stat().st_size
        if max_file_bytes is not None and size > max_file_bytes:
            rule = f"a file must be at most data.max_file_bytes = {max_file_bytes:,} bytes"
            violation = Violation(table, None, rule, examples=(f"{size:,} bytes",))
            raise DataValidationError(str(path), [violation], snapshot_kept=False)
    return {path.name: path for path in paths}


def _load(path: Path) -> pl.DataFrame:
    try:
        if path.suffix in (".csv", ".tsv"):
            return _read_text_table(path)
        return pl.read_parquet(path)
    except SourceError:
        raise
    except Exception as exc:  # polars raises many types for malformed files
        raise SourceError(f"{path.name}: cannot be read as {path.suffix[1:]}: {exc}") from exc


def _read_text_table(path: Path) -> pl.DataFrame:
    _require_utf8(path)
    with path.open("rb") as fh:
        header = fh.readline()
    separator = "\t" if path.suffix == ".tsv" or (b"\t" in header and b"," not in header) else ","
    return pl.read_csv(path, separator=separator, infer_schema=False)


def _require_utf8(path: Path, block: int = 1 << 20) -> None:
    """Checked block by block (an incremental decoder: a character split between blocks is fine)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with path.open("rb") as fh:
        while data := fh.read(block):
            try:
                decoder.decode(data)
            except UnicodeDecodeError as exc:  # exc.object: this block, after any bytes carried from the last
                line = lines + exc.object.count(b"\n", 0, exc.start) + 1
                raise SourceError(
                    f"{path.name}, line {line}: not UTF-8 (byte 0x{exc.object[exc.start]:02x}); "
                    "this is usually a Latin-1 or Windows-1252 export. Save it as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > utf8.{path.suffix[1:]}`"
                ) from None
            lines += data.count(b"\n")
        decoder.decode(b"", final=True)


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
