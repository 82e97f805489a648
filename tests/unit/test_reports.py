"""The run's evaluation tables and figures, built by the library from the reports (the task only logs them)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from instructrec.evaluation.evaluate import EvalReport
from instructrec.evaluation.reports import (
    TABLE_COLUMNS,
    delta_histogram,
    markdown_table,
    metrics_by_model,
    ndcg_by_type_and_slice,
    report_rows,
    slice_rows,
    training_curves,
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


def test_training_curves_mark_the_kept_epoch_and_need_a_validated_epoch():
    history = [
        {"epoch": -1, "loss": float("nan"), "val_ndcg@10": 0.10},
        {"epoch": 0, "loss": 2.0, "val_ndcg@10": 0.20},
        {"epoch": 1, "loss": 1.5},  # not validated
        {"epoch": 2, "loss": 1.2, "val_ndcg@10": 0.18},
    ]
    fig = training_curves("sasrec", history, best_epoch=0)
    assert fig is not None
    loss, ndcg = fig.axes
    assert list(loss.lines[0].get_xdata()) == [1, 2, 3]  # trained epochs, counted from 1
    assert list(ndcg.lines[0].get_xdata()) == [0, 1, 3]  # validated rows, 0: before training
    star = ndcg.lines[-1]
    assert list(star.get_xdata()) == [1] and list(star.get_ydata()) == [0.20] and "epoch 1" in star.get_label()
    assert training_curves("sasrec", history[:1], best_epoch=-1) is None  # nothing trained
    assert training_curves("sasrec", [{"epoch": 0, "loss": 1.0}], best_epoch=-1) is None  # nothing validated


def test_the_delta_histogram_counts_every_user_and_shows_the_interval():
    delta = np.array([-0.1, 0.0, 0.0, 0.05, 0.2])
    fig = delta_histogram(delta, 0.03, -0.02, 0.08, 0.95)
    (ax,) = fig.axes
    assert sum(p.get_height() for p in ax.patches[:40]) == len(delta)
    assert "95% CI [-0.0200, +0.0800]" in [t.get_text() for t in ax.get_legend().get_texts()][1]
