"""The run's evaluation tables and figures, built by the library from the reports (the task only logs them)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from instructrec.evaluation.evaluate import EvalReport
from instructrec.evaluation.reports import (
    TABLE_COLUMNS,
    markdown_table,
    metrics_by_model,
    ndcg_by_type_and_slice,
    report_rows,
    slice_rows,
)

TYPES = ("P1/I0", "P0/I1", "P1/I0/held-out")


def _report(name: str, base: float) -> EvalReport:
    by_type = {t: {c: base + i / 100 for c in TABLE_COLUMNS} for i, t in enumerate(TYPES)}
    slices = {"cold": {"ndcg@10": base, "n": 3}, "warm": {"ndcg@10": base + 0.05, "n": 7}}
    users = {t: np.arange(10) for t in TYPES}
    return EvalReport(name, by_type, slices, {t: np.full(10, base) for t in TYPES}, users, dict.fromkeys(TYPES, 10))


REPORTS = {"challenger": _report("challenger", 0.2), "popularity": _report("popularity", 0.1)}


def test_one_row_per_model_type_and_template_set_and_an_overall_row():
    rows = report_rows(REPORTS)
    assert len(rows) == 2 * (len(TYPES) + 1)
    held = [r for r in rows if r["templates"] == "held-out"]
    assert {(r["model"], r["type"]) for r in held} == {("challenger", "P1/I0"), ("popularity", "P1/I0")}
    overall = next(r for r in rows if r["model"] == "challenger" and r["type"] == "overall")
    assert overall["ndcg@10"] == pytest.approx(0.2 + (0 + 1 + 2) / 300) and overall["users"] == 10


def test_the_markdown_table_lists_each_type_then_overall_with_every_model():
    lines = markdown_table(REPORTS, ("ndcg@10",)).splitlines()
    assert lines[0] == "| type | model | ndcg@10 |"
    body = [line.split(" | ")[:2] for line in lines[2:]]
    expected = [[f"| {t}", m] for t in (*TYPES, "overall") for m in REPORTS]
    assert body == expected
    assert "| P0/I1 | popularity | 0.1100 |" in lines


def test_slices_are_one_row_per_model_and_slice():
    assert slice_rows(REPORTS)[1] == {"model": "challenger", "slice": "warm", "ndcg@10": 0.25, "users": 7}


def test_the_figures_draw_one_bar_per_model_and_value_and_render():
    by_type = ndcg_by_type_and_slice(REPORTS)
    left, right = by_type.axes
    assert len(left.patches) == 2 * len(TYPES) and len(right.patches) == 2 * 2
    overall = metrics_by_model(REPORTS)
    assert len(overall.axes[0].patches) == 2 * len(TABLE_COLUMNS)
    png = io.BytesIO()
    overall.savefig(png, format="png")
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
