"""The synthetic scaler: sizes as asked, the shapes that make it realistic, seeded, and readable as user data."""

import json

import numpy as np
import polars as pl
import pytest

from expectations.runner import validate_table
from instructrec.data import schema
from instructrec.data.snapshot import snapshot_raw
from instructrec.data.sources import fetch_raw, read_tables
from instructrec.data.synth import SynthSpec, events_per_user, write_synthetic

SPEC = SynthSpec(users=400, items=300, interactions=12_000, seed=3, block_users=150)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    stats = write_synthetic(SPEC, out)
    return stats, pl.read_parquet(out / "interactions.parquet"), pl.read_parquet(out / "items.parquet"), out


def test_sizes_are_as_asked_and_every_user_can_be_split(synth):
    stats, inter, items, _ = synth
    per_user = inter.group_by(schema.USER).len()["len"]
    assert items.height == 300 and per_user.len() == 400 and per_user.min() >= SPEC.min_per_user
    assert 0.98 * 12_000 <= inter.height == stats["interactions"] <= 12_000  # repeats redrawn, not dropped
    assert inter.unique([schema.USER, schema.ITEM]).height == inter.height


def test_popularity_is_a_long_tail_and_activity_heavy_tailed(synth):
    _, inter, _, _ = synth
    counts = inter.group_by(schema.ITEM).len()["len"].sort(descending=True).to_numpy()
    assert counts[: len(counts) // 5].sum() / counts.sum() > 0.5  # the top 20% of items take most events
    per_user = inter.group_by(schema.USER).len()["len"].to_numpy()
    assert per_user.max() > 4 * np.median(per_user)


def test_users_stay_in_their_genre_and_time_moves_forward(synth):
    _, inter, items, _ = synth
    main_genre = items.select(schema.ITEM, pl.col(schema.GENRES).list.first().alias("g"))
    top_share = (
        inter.join(main_genre, on=schema.ITEM)
        .group_by(schema.USER, "g")
        .len()
        .group_by(schema.USER)
        .agg((pl.col("len").max() / pl.col("len").sum()).alias("share"))["share"]
    )
    assert top_share.median() > 0.5  # a random catalogue walk would give about 1 / number of genres
    ordered = inter.with_columns(pl.col(schema.TIMESTAMP).diff().over(schema.USER).alias("gap"))
    assert (ordered["gap"].drop_nulls().dt.total_microseconds() > 0).all()


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data(synth, tmp_path):
    _, inter, _, _ = synth
    write_synthetic(SPEC, tmp_path / "again")
    assert pl.read_parquet(tmp_path / "again" / "interactions.parquet").equals(inter)
    other = SynthSpec(**{**SPEC.__dict__, "seed": 4})
    write_synthetic(other, tmp_path / "other")
    assert not pl.read_parquet(tmp_path / "other" / "interactions.parquet").equals(inter)


def test_it_reads_and_validates_as_user_data(synth, tmp_path):
    _, _, _, out = synth
    snap = snapshot_raw(fetch_raw(str(out), tmp_path / "dl"), tmp_path / "snaps")
    tables = read_tables(snap.kind, snap.raw_dir)
    assert tables.items.schema[schema.GENRES] == pl.List(pl.String)
    assert validate_table("items", tables.items, "items.parquet", tmp_path / "gx-items").success
    catalogue = {"catalogue": tables.items[schema.ITEM].to_list()}
    assert validate_table(
        "interactions", tables.interactions, "interactions.parquet", tmp_path / "gx", catalogue
    ).success


def test_counts_respect_the_floor_and_the_catalogue():
    counts = events_per_user(SynthSpec(users=50, items=20, interactions=900), np.random.default_rng(0))
    assert counts.sum() == 900 and counts.min() >= 5 and counts.max() <= 20
    with pytest.raises(ValueError, match="at least 500"):
        SynthSpec(users=100, items=20, interactions=400)


def test_the_command_writes_a_directory_for_data(tmp_path, monkeypatch, capsys):
    from ops.cli import main

    monkeypatch.setenv("INSTRUCTREC_HOME", str(tmp_path / "home"))
    args = ["synth", "--users", "30", "--items", "40", "--interactions", "600", "--out", str(tmp_path / "d")]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["users"] == 30 and (tmp_path / "d" / "items.parquet").exists()
    assert main(["synth", "--users", "30", "--items", "40", "--interactions", "10", "--out", str(tmp_path / "e")]) == 2
