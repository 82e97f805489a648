"""The suites' expectations computed exactly in Polars over a whole table (lazy, streaming collect).

Great Expectations runs on pandas, which costs several times a table's size: past
`data.validation_sample_rows` rows it sees a seeded sample (for its data docs and any
expectation not read here), and every expectation this module reads is decided over every
row here, in one streaming pass for all the counts; offending values and rows are fetched
only for a rule that fails. Messages keep the GX runner's form: table, column, rule, examples.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from instructrec.data import schema
from instructrec.errors import Violation

EXAMPLES = 5
STRING_TYPES = {"str": (pl.String, pl.Categorical, pl.Enum)}


def _resolve(value, params: dict):
    return params[value["$PARAMETER"]] if isinstance(value, dict) and "$PARAMETER" in value else value


def _outside(column: str, low, high, length: bool = False) -> pl.Expr:
    value = pl.col(column).str.len_chars() if length else pl.col(column)
    out = pl.lit(False)
    if low is not None:
        out = out | (value < low)
    if high is not None:
        out = out | (value > high)
    return pl.col(column).is_not_null() & out  # GX leaves nulls to the null rules


# expectation type -> (columns it reads, kwargs) -> the expression that is True on an offending row
ROW_RULES: dict[str, Callable[[dict], pl.Expr]] = {
    "expect_column_values_to_not_be_null": lambda k: pl.col(k["column"]).is_null(),
    "expect_column_values_to_be_unique": lambda k: pl.col(k["column"]).is_duplicated(),
    "expect_compound_columns_to_be_unique": lambda k: pl.struct(k["column_list"]).is_duplicated(),
    "expect_column_values_to_be_between": lambda k: _outside(k["column"], k.get("min_value"), k.get("max_value")),
    "expect_column_value_lengths_to_be_between": lambda k: _outside(
        k["column"], k.get("min_value"), k.get("max_value"), length=True
    ),
    "expect_column_values_to_be_in_set": lambda k: (
        pl.col(k["column"]).is_not_null() & ~pl.col(k["column"]).is_in(pl.Series(list(k["value_set"])).implode())
    ),
}
TABLE_RULES = {"expect_table_row_count_to_be_between", "expect_column_to_exist", "expect_column_values_to_be_of_type"}


def covers(expectation: dict) -> bool:
    """Whether this module decides the expectation exactly (else GX's sampled result stands)."""
    return expectation["type"] in ROW_RULES or expectation["type"] in TABLE_RULES


def exact_violations(table: str, frame: pl.LazyFrame, suite: dict, params: dict) -> list[Violation]:
    """Every violation of the suite's covered expectations over the whole (lazy) table."""
    columns = frame.collect_schema()
    total = frame.select(pl.len()).collect(engine="streaming").item()
    out: list[Violation] = []
    row_checks: list[tuple[str, str | None, pl.Expr]] = []
    for e in suite["expectations"]:
        if not covers(e):
            continue
        kwargs = {k: _resolve(v, params) for k, v in e.get("kwargs", {}).items()}
        rule = f"{(e.get('meta') or {}).get('rule', e['type'])} ({e['type']})"
        named = [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list", []))
        column = ", ".join(named) or None
        if e["type"] == "expect_column_to_exist":
            if kwargs["column"] not in columns:
                out.append(Violation(table, column, f"{rule}: column is missing"))
            continue
        if any(c not in columns for c in named):
            continue  # consequence of a missing column, already reported
        if e["type"] == "expect_table_row_count_to_be_between":
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            if (low is not None and total < low) or (high is not None and total > high):
                out.append(Violation(table, None, rule, examples=(f"observed {total}",)))
        elif e["type"] == "expect_column_values_to_be_of_type":
            wanted = STRING_TYPES.get(kwargs["type_"])
            if wanted is not None and not isinstance(columns[kwargs["column"]], wanted):
                out.append(Violation(table, column, rule, examples=(f"observed {columns[kwargs['column']]}",)))
        else:
            row_checks.append((rule, column, ROW_RULES[e["type"]](kwargs)))
    if not row_checks:
        return out
    counts = frame.select([bad.sum().alias(str(i)) for i, (_, _, bad) in enumerate(row_checks)]).collect(
        engine="streaming"
    )
    for i, (rule, column, bad) in enumerate(row_checks):
        n = int(counts[str(i)][0])
        if n:
            out.append(_with_examples(table, frame, rule, column, bad, n, total))
    return out


def _with_examples(
    table: str, frame: pl.LazyFrame, rule: str, column: str | None, bad: pl.Expr, n: int, total: int
) -> Violation:
    """The first offending rows of a failed rule, their values and 1-based source rows."""
    names = [c.strip() for c in (column or "").split(",") if c.strip()]
    keep = [*names, *([schema.ROW] if schema.ROW in frame.collect_schema() else [])]
    head = frame.filter(bad).select(keep).head(EXAMPLES).collect(engine="streaming")
    values = head.select(names).rows()
    examples = tuple(shown(v[0] if len(v) == 1 else {n: plain(x) for n, x in zip(names, v)}) for v in values)
    rows = tuple(int(r) for r in head[schema.ROW]) if schema.ROW in head.columns else ()
    return Violation(table, column, rule, unexpected=n, total=total, examples=examples, rows=rows)


def shown(value, limit: int = 60) -> str:
    """An offending value as a message shows it: a 10 MB title is cut, with its length said."""
    text = repr(plain(value))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value)):,} characters)"


def plain(value):
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
