from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from instructrec.data import schema
from instructrec.data.split import Catalogue, chronological, sample_users, temporal_leave_one_out
from instructrec.evaluation.evaluate import head_items

CAT = Catalogue(["a", "b", "c", "d", "e"], list("ABCDE"), list("ABCDE"), [()] * 5)
T0 = datetime(2021, 1, 1, tzinfo=UTC)


def frame(rows):
    return pl.DataFrame(
        [(u, i, T0 + timedelta(hours=h), 4.0) for u, i, h in rows],
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "rating": pl.Float32,
        },
        orient="row",
    )


def test_last_is_test_second_last_is_valid_by_time_not_file_order():
    split = temporal_leave_one_out(frame([("u", "e", 5), ("u", "a", 1), ("u", "c", 3), ("u", "b", 2)]), CAT)
    assert split.train[0].tolist() == [1, 2]  # a, b
    assert split.valid[0] == 3 and split.test[0] == 5  # c, e


def test_equal_timestamps_keep_the_source_row_order():
    """Same-second events: the later row of the file is the later event (stable sort, docs/protocol.md)."""
    split = temporal_leave_one_out(frame([("u", "d", 1), ("u", "b", 1), ("u", "a", 0), ("u", "c", 1)]), CAT)
    assert split.train[0].tolist() == [1, 4] and split.valid[0] == 2 and split.test[0] == 3  # a, d | b | c


def test_row_order_column_orders_ties_after_any_reshuffle():
    """The source row number survives Parquet and Polars operations that do not keep row order."""
    rows = frame([("u", "c", 1), ("u", "a", 1), ("u", "b", 1), ("v", "e", 2), ("v", "a", 2), ("v", "d", 2)])
    rows = rows.with_row_index(schema.ROW, offset=1).with_columns(pl.col(schema.ROW).cast(pl.Int64))
    shuffled = rows.sample(fraction=1.0, shuffle=True, seed=3)
    assert shuffled[schema.ROW].to_list() != rows[schema.ROW].to_list()
    split = temporal_leave_one_out(shuffled, CAT)
    assert split.users == ["u", "v"]
    assert split.test.tolist() == [2, 4] and split.valid.tolist() == [1, 1]  # b after a; d after a
    assert chronological(shuffled)[schema.ITEM].to_list() == ["c", "a", "b", "e", "a", "d"]


def test_short_users_only_train_and_are_not_evaluated():
    split = temporal_leave_one_out(
        frame([("u", "a", 1), ("u", "b", 2), ("v", "a", 1), ("v", "b", 2), ("v", "c", 3)]), CAT
    )
    assert split.users == ["u", "v"]
    assert split.eval_users.tolist() == [1]
    assert split.popularity.tolist() == [0, 2, 1, 0, 0, 0]  # train only


def test_user_sampling_is_seeded_and_bounded():
    df = frame([(f"u{k}", "a", k) for k in range(50)])
    a, b = sample_users(df, 10, seed=1), sample_users(df, 10, seed=1)
    assert a["user_id"].n_unique() == 10 and a.equals(b)


def test_head_items_cover_the_requested_share():
    pop = np.array([0, 50, 30, 10, 5, 5], dtype=float)
    assert head_items(pop, 0.5).tolist() == [1]
    assert set(head_items(pop, 0.8).tolist()) == {1, 2}
