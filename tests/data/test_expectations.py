"""Each expectation of each suite fails on a bad fixture, with a message naming it."""

from datetime import UTC, datetime

import polars as pl
import pytest

from expectations.runner import load_suite, validate_table
from instructrec.data import schema
from instructrec.data.sources.coerce import to_canonical, with_row_numbers
from tests.conftest import make_tables


def canonical():
    inter, items = make_tables()
    inter = to_canonical(with_row_numbers(inter), schema.INTERACTIONS_SCHEMA, "interactions", "interactions.csv")
    items = to_canonical(
        with_row_numbers(items), {**schema.ITEMS_SCHEMA, **schema.ITEM_ATTRIBUTES}, "items", "items.csv"
    )
    return inter, items


def run(table, df, tmp_path, params=None):
    return validate_table(table, df, f"{table}.csv", tmp_path / table, params)


def test_good_tables_pass_and_build_data_docs(tmp_path):
    inter, items = canonical()
    out = run("items", items, tmp_path)
    assert out.success and out.violations == []
    assert (out.docs_dir / "index.html").exists()
    out = run("interactions", inter, tmp_path, {"catalogue": items["item_id"].to_list()})
    assert out.success, out.violations


def test_interactions_without_ratings_pass_but_a_missing_required_column_does_not(tmp_path):
    inter, items = canonical()
    catalogue = {"catalogue": items["item_id"].to_list()}
    assert run("interactions", inter.drop(schema.RATING), tmp_path, catalogue).success  # clicks, plays: no ratings
    out = run("interactions", inter.drop(schema.TIMESTAMP), tmp_path / "t", catalogue)
    assert not out.success
    assert any(v.column == "timestamp" and v.rule.startswith("required column") for v in out.violations)


def set_row(df, column, row, value, dtype=None):
    expr = (
        pl.when(pl.col(schema.ROW) == row)
        .then(pl.lit(value, dtype=dtype or df.schema[column]))
        .otherwise(pl.col(column))
    )
    return df.with_columns(expr.alias(column))


FUTURE = datetime(2999, 1, 1, tzinfo=UTC)
CASES = {
    "missing column": (lambda d: d.drop("user_id"), "user_id", "column is missing"),
    "null user_id": (lambda d: set_row(d, "user_id", 4, None), "user_id", "must not be null"),
    "rating 9": (lambda d: set_row(d, "rating", 3, 9.0), "rating", "ratings must lie in [0, 5]"),
    "unknown item": (
        lambda d: set_row(d, "item_id", 2, "no-such-item"),
        "item_id",
        "every item must be in the items table",
    ),
    "null timestamp": (lambda d: set_row(d, "timestamp", 5, None), "timestamp", "present and parseable"),
    "future timestamp": (lambda d: set_row(d, "timestamp", 5, FUTURE), "timestamp", "not be in the future"),
    "duplicate event": (lambda d: pl.concat([d, d.head(1)]), "user_id, item_id, timestamp", "must be unique"),
    "empty table": (lambda d: d.head(0), None, "must not be empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_interactions_suite_rejects(case, tmp_path):
    inter, items = canonical()
    breaker, column, rule = CASES[case]
    out = run("interactions", breaker(inter), tmp_path, {"catalogue": items["item_id"].to_list()})
    assert not out.success
    hit = [v for v in out.violations if rule in v.rule]
    assert hit, out.violations
    assert hit[0].column == column
    with pytest.raises(Exception) as err:
        out.raise_for_failure()
    assert "interactions.csv" in str(err.value) and rule in str(err.value)


def test_offending_values_and_rows_are_reported(tmp_path):
    inter, items = canonical()
    out = run("interactions", set_row(inter, "rating", 7, 9.0), tmp_path, {"catalogue": items["item_id"].to_list()})
    (v,) = out.violations
    assert v.examples == ("9.0",) and v.rows == (7,) and v.unexpected == 1


@pytest.mark.parametrize(
    "breaker,rule",
    [
        (lambda d: d.drop("title"), "column is missing"),
        (lambda d: pl.concat([d, d.head(1)]), "item_id must be unique"),
        (lambda d: set_row(d, "text", 2, None), "text must not be null"),
    ],
)
def test_items_suite_rejects(breaker, rule, tmp_path):
    _, items = canonical()
    out = run("items", breaker(items), tmp_path)
    assert not out.success and any(rule in v.rule for v in out.violations)


def test_a_huge_title_is_refused_with_a_short_message(tmp_path):
    _, items = canonical()
    out = run("items", set_row(items, "title", 3, "x" * 10_000_000), tmp_path)
    (v,) = out.violations
    assert v.column == "title" and "at most data.max_title_chars" in v.rule and v.rows == (3,)
    message = v.describe()
    assert "10,000,000 characters" in message and len(message) < 400, message
    limited = run("items", set_row(items, "title", 3, "x" * 300), tmp_path / "limited", {"max_title_chars": 200})
    assert limited.violations and limited.violations[0].column == "title"  # the limit is a parameter


def feedback_frame(kind="like", event_ids=("e1", "e2")):
    now = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "event_id": list(event_ids),
            "user_id": ["u1", "u2"],
            "item_id": ["i1", None],
            "kind": [kind, "instruction"],
            "text": [None, "something funny"],
            "model_version": ["1", "1"],
            "arm": ["champion", "challenger"],
            "request_id": ["r1", "r2"],
            "timestamp": [now, now],
        }
    )


def test_feedback_suite_accepts_valid_events(tmp_path):
    assert run("feedback", feedback_frame(), tmp_path).success


@pytest.mark.parametrize(
    "frame,rule",
    [
        (feedback_frame(kind="love"), "kind must be"),
        (feedback_frame(event_ids=("e1", "e1")), "event_id must be unique"),
    ],
)
def test_feedback_suite_rejects(frame, rule, tmp_path):
    out = run("feedback", frame, tmp_path)
    assert not out.success and any(rule in v.rule for v in out.violations)


def test_feedback_kinds_are_named_once():
    suite = load_suite("feedback")
    (kinds,) = [
        e["kwargs"]["value_set"]
        for e in suite["expectations"]
        if e["kwargs"].get("column") == "kind" and "value_set" in e["kwargs"]
    ]
    assert tuple(kinds) == schema.FEEDBACK_KINDS


@pytest.mark.parametrize("table", ["interactions", "items"])
def test_a_table_over_the_row_limit_is_refused(table, tmp_path):
    inter, items = canonical()
    df = {"interactions": inter, "items": items}[table]
    params = {
        "max_rows": df.height - 1,
        **({"catalogue": items["item_id"].to_list()} if table == "interactions" else {}),
    }
    out = run(table, df, tmp_path, params)
    assert len(out.violations) == 1 and out.violations[0].rule.startswith("at most data.max_rows rows")
    assert run(table, df, tmp_path / "at-limit", {**params, "max_rows": df.height}).success


def _key(v):
    return (v.column, v.rule, v.unexpected, v.rows)


ITEM_CASES = {
    "missing title": lambda d: d.drop("title"),
    "duplicate item": lambda d: pl.concat([d, d.head(1)]),
    "null text": lambda d: set_row(d, "text", 2, None),
    "long title": lambda d: set_row(d, "title", 3, "x" * 5_000),
}


@pytest.mark.integration  # GX on the whole table beside Polars, per case: about 1.4 s each
@pytest.mark.parametrize("case", [c for c in CASES if c != "empty table"] + [f"items: {c}" for c in ITEM_CASES])
def test_past_the_sample_size_polars_decides_exactly_what_gx_decides_on_the_whole_table(case, tmp_path):
    """GX on 5 sampled rows + exact Polars checks report every violation GX finds over every row:
    same column, rule, count and source rows (a sample of 5 would miss most of them)."""
    inter, items = canonical()
    if case.startswith("items: "):
        table, frame, params = "items", ITEM_CASES[case.removeprefix("items: ")](items), None
    else:
        table, frame, params = "interactions", CASES[case][0](inter), {"catalogue": items["item_id"].to_list()}
    whole = validate_table(table, frame, f"{table}.csv", tmp_path / "whole", params)
    sampled = validate_table(table, frame, f"{table}.csv", tmp_path / "sampled", params, sample_rows=5)
    assert not whole.success and not sampled.success
    assert sampled.result["exact_in_polars"] and sampled.result["sample_rows"] == 5
    assert sorted(map(_key, sampled.violations), key=str) == sorted(map(_key, whole.violations), key=str)
    single = [[v.examples for v in out.violations if v.rows and "," not in str(v.column)] for out in (sampled, whole)]
    single = [[e for e in s if e != ("None",) and e != ("'NaT'",)] for s in single]  # a null: None here, NaT in GX
    assert single[0] == single[1]


def test_a_clean_table_past_the_sample_size_passes(tmp_path):
    inter, items = canonical()
    out = validate_table(
        "interactions", inter, "i.csv", tmp_path, {"catalogue": items["item_id"].to_list()}, sample_rows=10
    )
    assert out.success and out.violations == [] and out.result["rows"] == inter.height
