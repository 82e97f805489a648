"""Source readers. Each turns raw files into the canonical tables of schema.py.

A source first yields its raw files (bytes or paths, for the content-hash snapshot);
the tables are then read back from the snapshot, so what was validated and
trained on is exactly what was kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from instructrec.data.sources import directory, movielens


@dataclass(frozen=True)
class RawInput:
    kind: str  # reader name: "movielens" (every embedded release) or "directory"
    origin: str  # where it came from, for lineage
    files: Mapping[
        str, bytes | Path
    ]  # a user's files stay on disk (streamed into the snapshot); fetched ones are bytes


@dataclass(frozen=True)
class Tables:
    interactions: pl.DataFrame
    items: pl.DataFrame
    files: dict[str, str]  # table -> file name it came from
    item_noun: str = "item"


READERS = {"movielens": movielens, "directory": directory}


def fetch_raw(source: str, downloads: Path, max_file_bytes: int | None = None) -> RawInput:
    if source in movielens.RELEASES:
        release = movielens.RELEASES[source]
        return RawInput(movielens.KIND, release.origin, movielens.fetch(release, downloads))
    path = Path(source)
    return RawInput(directory.KIND, str(path.resolve()), directory.collect(path, max_file_bytes))


def read_tables(kind: str, raw_dir: Path) -> Tables:
    reader = READERS[kind]
    interactions, items, files = reader.read(raw_dir)
    return Tables(interactions, items, files, getattr(reader, "ITEM_NOUN", "item"))
