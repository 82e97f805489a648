"""Cast raw columns to the canonical dtypes, failing loudly on unparseable values.

Missing columns are left missing on purpose: the expectation suites report
them by name. A value that is present but cannot be cast is reported here,
with its row number and raw text, because after a lenient cast it would
silently become null.
"""

from __future__ import annotations

import polars as pl

from instructrec.data import schema
from instructrec.errors import DataValidationError, Violation

_EPOCH = r"^\s*-?\d+(\.\d+)?\s*$"
_ISO_TZ = ("%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%:z")
_ISO_NAIVE = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_RULES = {
    schema.UTC_DATETIME: "values must parse as a timestamp (ISO 8601 or epoch seconds)",
    pl.Float32(): "values must be numbers",
    pl.Int32(): "values must be integers",
}


def with_row_numbers(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_row_index(schema.ROW, offset=1).with_columns(pl.col(schema.ROW).cast(pl.Int64))


def _to_datetime(col: pl.Series) -> pl.Series:
    if col.dtype == pl.Datetime:
        tz = getattr(col.dtype, "time_zone", None)
        col = col.dt.replace_time_zone("UTC") if tz is None else col.dt.convert_time_zone("UTC")
        return col.cast(schema.UTC_DATETIME)
    if col.dtype.is_numeric():
        return (col.cast(pl.Float64) * 1_000_000).cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    text = col.cast(pl.String).str.strip_chars()
    epoch = text.str.contains(_EPOCH)
    as_epoch = _to_datetime(text.cast(pl.Float64, strict=False))
    iso = text.str.replace(r"Z$", "+00:00").str.replace("T", " ", literal=True)
    with_offset = [iso.str.to_datetime(f, strict=False, time_unit="us").dt.convert_time_zone("UTC") for f in _ISO_TZ]
    naive = [iso.str.to_datetime(f, strict=False, time_unit="us").dt.replace_time_zone("UTC") for f in _ISO_NAIVE]
    as_iso = pl.select(pl.coalesce(*with_offset, *naive)).to_series()
    return pl.select(pl.when(epoch).then(as_epoch).otherwise(as_iso)).to_series().cast(schema.UTC_DATETIME)


def _cast(col: pl.Series, dtype: pl.DataType) -> pl.Series:
    if dtype == schema.UTC_DATETIME:
        return _to_datetime(col)
    if dtype == pl.List(pl.String()):
        if col.dtype == pl.List(pl.String()):
            return col
        return (
            col.cast(pl.String)
            .str.split("|")
            .list.eval(pl.element().str.strip_chars())
            .list.eval(pl.element().filter(pl.element() != ""))
        )
    if dtype == pl.String() and col.dtype.is_float():
        return col.cast(pl.Int64, strict=False).cast(pl.String).fill_null(col.cast(pl.String))
    return col.cast(dtype, strict=False)


def to_canonical(
    df: pl.DataFrame,
    dtypes: dict[str, pl.DataType],
    table: str,
    file: str,
) -> pl.DataFrame:
    """Cast the known columns of `df`; raise naming every column that fails."""
    violations: list[Violation] = []
    columns = []
    for name, dtype in dtypes.items():
        if name not in df.columns:
            continue
        raw = df[name]
        cast = _cast(raw, dtype).alias(name)
        bad = raw.is_not_null() & cast.is_null()
        if raw.dtype == pl.String:
            bad &= raw.str.strip_chars() != ""
        if bad.any():
            rows = df.filter(bad)
            violations.append(
                Violation(
                    table=table,
                    column=name,
                    rule=_RULES.get(dtype, f"values must parse as {dtype}"),
                    unexpected=int(bad.sum()),
                    total=df.height,
                    examples=tuple(repr(v) for v in rows[name].head(5).to_list()),
                    rows=tuple(rows[schema.ROW].head(5).to_list()) if schema.ROW in df.columns else (),
                )
            )
        columns.append(cast)
    if violations:
        raise DataValidationError(file, violations)
    return df.with_columns(columns)
