"""Run the JSON expectation suites of this folder with Great Expectations 1.x.

Each run uses a throwaway file-backed GX context so that the HTML data docs
are built next to the JSON result; both are returned for logging. Failures
are translated into `Violation`s that name the table, column, rule and a few
offending values with their source row numbers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from expectations.exact import covers, exact_violations, plain, shown
from instructrec.config import DataConfig
from instructrec.data import schema
from instructrec.errors import DataValidationError, Violation

SUITE_DIR = Path(__file__).parent
SUITES = ("interactions", "items", "feedback")


def suite_parameters(data: DataConfig) -> dict[str, dict]:
    """The limits of `data` that the suites read as $PARAMETERs, per suite (named here once)."""
    return {
        "items": {
            "max_title_chars": data.max_title_chars,
            "max_text_chars": data.max_text_chars,
            "max_rows": data.max_rows,
        },
        "interactions": {"max_rows": data.max_rows},
    }


# suite parameters a caller may leave out: the config's defaults (the pipeline passes its config's values)
DEFAULT_PARAMETERS = suite_parameters(DataConfig())


@dataclass(frozen=True)
class ValidationOutcome:
    table: str
    file: str
    success: bool
    violations: list[Violation]
    result: dict  # GX validation result as JSON
    docs_dir: Path  # data docs site (index.html)

    def raise_for_failure(self) -> None:
        if not self.success:
            raise DataValidationError(self.file, self.violations)


def load_suite(name: str) -> dict:
    return json.loads((SUITE_DIR / f"{name}.json").read_text())


def applicable(spec: dict, columns: list[str]) -> dict:
    """The suite without the expectations on an optional column (meta "optional") that the table does not have:
    data without ratings (clicks, plays) is valid, and must not be refused by a rule on their range."""
    keep = [
        e
        for e in spec["expectations"]
        if not (e.get("meta", {}).get("optional") and e["kwargs"].get("column") not in columns)
    ]
    return {**spec, "expectations": keep}


def _to_pandas(df: pl.DataFrame):
    # GX 1.x has no Polars data source; lists are not validated by the suites.
    keep = [c for c in df.columns if not isinstance(df.schema[c], pl.List)]
    return df.select(keep).to_pandas()


def _context(root: Path):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, ctx


def validate_table(
    table: str,
    df: pl.DataFrame,
    file: str,
    workdir: Path,
    parameters: dict | None = None,
    sample_rows: int | None = None,
) -> ValidationOutcome:
    """Validate `df` against suite `table`; never raises for bad data itself.

    sample_rows: past this many rows GX sees a seeded sample of that size, and every expectation
    that expectations.exact reads is decided over the whole table in Polars instead (bounded memory).
    """
    spec = applicable(load_suite(table), df.columns)
    exact = sample_rows is not None and df.height > sample_rows
    whole = df
    if exact:
        assert sample_rows is not None
        df = df.sample(n=sample_rows, seed=0).sort(schema.ROW if schema.ROW in df.columns else pl.first())
    gx, ctx = _context(workdir)
    suite = ctx.suites.add(gx.ExpectationSuite(**spec))
    asset = ctx.data_sources.add_pandas(f"{table}-source").add_dataframe_asset(table)
    batch = asset.add_batch_definition_whole_dataframe("whole")
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
    result_format: dict = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
    if schema.ROW in df.columns:
        result_format["unexpected_index_column_names"] = [schema.ROW]
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=f"{table}-checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
            result_format=result_format,
        )
    )
    params = {"now": datetime.now(UTC), **DEFAULT_PARAMETERS.get(table, {}), **(parameters or {})}
    run = checkpoint.run(batch_parameters={"dataframe": _to_pandas(df)}, expectation_parameters=params)
    (validation,) = run.run_results.values()
    docs = workdir / "gx" / "uncommitted" / "data_docs" / "local_site"
    if not exact:
        violations = _violations(table, df.height, validation.results)
        return ValidationOutcome(table, file, bool(validation.success), violations, validation.to_json_dict(), docs)
    sampled = [r for r in validation.results if not covers({"type": r.expectation_config.type})]
    violations = exact_violations(table, whole.lazy(), spec, params) + _violations(table, df.height, sampled)
    result = {**validation.to_json_dict(), "sample_rows": df.height, "rows": whole.height, "exact_in_polars": True}
    return ValidationOutcome(table, file, not violations, violations, result, docs)


def _violations(table: str, total: int, results) -> list[Violation]:
    missing = {
        r.expectation_config.kwargs["column"]
        for r in results
        if r.expectation_config.type == "expect_column_to_exist" and not r.success
    }
    out = []
    for r in results:
        if r.success:
            continue
        cfg = r.expectation_config
        columns = [cfg.kwargs["column"]] if "column" in cfg.kwargs else list(cfg.kwargs.get("column_list", []))
        column = ", ".join(columns) or None
        is_existence = cfg.type == "expect_column_to_exist"
        if not is_existence and missing.intersection(columns):
            continue  # consequence of a missing column, already reported
        rule = (cfg.meta or {}).get("rule", cfg.type)
        res = r.result or {}
        if is_existence:
            out.append(Violation(table, column, f"{rule} ({cfg.type}): column is missing"))
            continue
        examples = tuple(shown(v) for v in res.get("partial_unexpected_list", []) or [])
        if not examples and "observed_value" in res:
            examples = (f"observed {plain(res['observed_value'])!r}",)
        rows = tuple(_row_number(entry) for entry in res.get("partial_unexpected_index_list", []) or [])
        out.append(
            Violation(
                table=table,
                column=column,
                rule=f"{rule} ({cfg.type})",
                unexpected=res.get("unexpected_count"),
                total=total,
                examples=examples,
                rows=rows,
            )
        )
    return out


def _row_number(entry) -> int:
    """1-based source row: our _row column when present, else the frame's 0-based index."""
    return int(entry[schema.ROW]) if isinstance(entry, dict) else int(entry) + 1
