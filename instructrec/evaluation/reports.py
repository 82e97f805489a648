"""A run's evaluation as a reviewer reads it: the tables (rows, markdown) and figures built from the reports.

Library code, so the task only logs what it gets (adapters/tracking). Figures are `matplotlib.figure.Figure`
objects, not pyplot's: no global figure registry to close, no backend to pick.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from instructrec.evaluation.evaluate import EvalCase, EvalReport, Scorer, scored_in_batches
from instructrec.language.instructions import HELD_OUT
from instructrec.serving.lists import LIST_METRICS

# full ranking (the headline) and the paper's 1+9 protocol (s_ prefix)
TABLE_COLUMNS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "s_hr@1", "s_ndcg@5")
# beside accuracy, what the top-10 lists are like (instructrec.serving.lists); item vectors: the challenger's item tower
LIST_COLUMNS = LIST_METRICS


def report_rows(reports: dict[str, EvalReport]) -> list[dict]:
    """One row per (model, type, template set): the run's evaluation table."""
    rows = []
    for name, rep in reports.items():
        for key, values in rep.by_type.items():
            held = key.endswith("/" + HELD_OUT)
            rows.append(
                {
                    "model": name,
                    "type": key.removesuffix("/" + HELD_OUT),
                    "templates": HELD_OUT if held else "seen",
                    "users": rep.counts[key],
                    **values,
                }
            )
        rows.append(
            {"model": name, "type": "overall", "templates": "all", "users": max(rep.counts.values()), **rep.overall}
        )
    return rows


def slice_rows(reports: dict[str, EvalReport]) -> list[dict]:
    """One row per (model, slice): cold/warm users, long-tail/head targets."""
    return [
        {"model": name, "slice": s, "ndcg@10": v["ndcg@10"], "users": v.get("n")}
        for name, rep in reports.items()
        for s, v in rep.slices.items()
    ]


def markdown_table(reports: dict[str, EvalReport], columns: tuple[str, ...] = TABLE_COLUMNS + LIST_COLUMNS) -> str:
    """Per (P, I) type and per held-out template set, one row per model: full-ranking and 1+9 columns."""
    lines = ["| type | model | " + " | ".join(columns) + " |", "|" + "---|" * (2 + len(columns))]
    for key in [*next(iter(reports.values())).by_type, "overall"]:
        for name, rep in reports.items():
            values = rep.overall if key == "overall" else rep.by_type.get(key)
            if values:
                lines.append(
                    f"| {key} | {name} | " + " | ".join(f"{values.get(c, float('nan')):.4f}" for c in columns) + " |"
                )
    return "\n".join(lines) + "\n"


def ndcg_by_type_and_slice(reports: dict[str, EvalReport]) -> Figure:
    names = list(reports)
    types = list(next(iter(reports.values())).by_type)
    slices = list(next(iter(reports.values())).slices)
    fig = Figure(figsize=(12, 4))
    ax1, ax2 = fig.subplots(1, 2)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        x = np.arange(len(types)) + i * width
        ax1.bar(x, [reports[name].by_type[t]["ndcg@10"] for t in types], width, label=name)
        x2 = np.arange(len(slices)) + i * width
        ax2.bar(x2, [reports[name].slices[s]["ndcg@10"] for s in slices], width, label=name)
    ax1.set_xticks(np.arange(len(types)) + 0.4 - width / 2, types)
    ax1.set(title="Test NDCG@10 (full ranking) by instruction type")
    ax1.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax2.set_xticks(np.arange(len(slices)) + 0.4 - width / 2, slices)
    ax2.set(title="Test NDCG@10 by slice")
    ax1.legend()
    fig.tight_layout()
    return fig


def metrics_by_model(reports: dict[str, EvalReport]) -> Figure:
    """Every model side by side on every headline metric (overall, test split)."""
    fig = Figure(figsize=(10, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(reports)
    for i, (name, rep) in enumerate(reports.items()):
        ax.bar(np.arange(len(TABLE_COLUMNS)) + i * width, [rep.overall[c] for c in TABLE_COLUMNS], width, label=name)
    ax.set_xticks(np.arange(len(TABLE_COLUMNS)) + 0.4 - width / 2, TABLE_COLUMNS)
    ax.set(title="Test metrics, overall: challenger vs champion vs baselines")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def score_histograms(scorers: dict[str, Scorer], case: EvalCase, rows: int = 256) -> Figure:
    """Score histograms: the held-out target item against every other item (separation is what ranks)."""
    texts, hist, target = case.texts[:rows], case.history[:rows], case.target[:rows]
    fig = Figure(figsize=(5 * len(scorers), 3.5))
    axes = fig.subplots(1, len(scorers), squeeze=False)
    for ax, (name, scorer) in zip(axes[0], scorers.items(), strict=False):
        scores = scored_in_batches(scorer, texts, hist)
        hit = np.zeros_like(scores, dtype=bool)
        hit[np.arange(len(target)), target] = True
        known = np.isfinite(scores)  # items a mapped champion never saw score -inf
        ax.hist(scores[~hit & known], bins=60, density=True, alpha=0.6, label="other items")
        ax.hist(scores[hit & known], bins=30, density=True, alpha=0.6, label="held-out target")
        ax.set(title=f"{name}: scores, {case.type} test", xlabel="score", ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def diversity_tradeoff_figure(curve: list[dict[str, float]], case_type: str) -> Figure:
    """MMR's accuracy against intra-list diversity, one point per diversity weight (labelled)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    x, y = [p["ild_vector@10"] for p in curve], [p["ndcg@10"] for p in curve]
    ax.plot(x, y, "o-")
    for p in curve:
        ax.annotate(
            f"{p['diversity']:g}",
            (p["ild_vector@10"], p["ndcg@10"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set(
        xlabel="intra-list diversity (1 - cosine, item tower)",
        ylabel=f"NDCG@10 ({case_type}, test)",
        title="MMR re-ranking: accuracy vs diversity (labels: weight)",
    )
    fig.tight_layout()
    return fig


def epoch_step(epoch: int) -> int:
    """Where a history row's 0-based `epoch` sits on every curve, plotted or logged: epochs count from 1, and 0 is
    the weights before training (row -1)."""
    return epoch + 1


def training_curves(stage: str, history: list[dict], best_epoch: int) -> Figure | None:
    """Loss and every validation NDCG@10 per epoch, the kept (best) epoch marked; None without a trained and a
    validated epoch. The x axis counts epochs from 1 (0: the weights before training, history row -1)."""
    rows = [r for r in history if r["epoch"] >= 0]
    validated = [r for r in history if "val_ndcg@10" in r]
    if not rows or not validated:
        return None
    best = epoch_step(best_epoch)
    fig = Figure(figsize=(10, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([epoch_step(r["epoch"]) for r in rows], [r["loss"] for r in rows], marker="o")
    ax1.set(title=f"{stage}: training loss", xlabel="epoch")
    for key in (k for k in validated[-1] if k.startswith("val_") and k.endswith("ndcg@10")):
        points = [r for r in validated if key in r]
        ax2.plot(
            [epoch_step(r["epoch"]) for r in points],
            [r[key] for r in points],
            marker="o",
            label=key.removeprefix("val_"),
        )
    kept = next((r for r in validated if r["epoch"] == best_epoch), None)
    for ax in (ax1, ax2):
        ax.axvline(best, color="tab:red", linestyle="--", linewidth=1)
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs
    if kept is not None:
        label = f"kept: epoch {best}, {kept['val_ndcg@10']:.4f}"
        ax2.plot(
            [best], [kept["val_ndcg@10"]], marker="*", markersize=14, color="tab:red", linestyle="none", label=label
        )
    ax2.set(title=f"{stage}: validation NDCG@10", xlabel="epoch (0: before training)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def delta_histogram(delta: np.ndarray, mean: float, low: float, high: float, confidence: float) -> Figure:
    """The gate's per-user NDCG@10 deltas (challenger - champion) with their mean and its confidence interval."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(delta, bins=40, color="tab:gray")
    ax.axvline(mean, color="tab:blue", label=f"mean {mean:+.4f}")
    ax.axvspan(low, high, color="tab:blue", alpha=0.2, label=f"{confidence:.0%} CI [{low:+.4f}, {high:+.4f}]")
    ax.set(title="Per-user delta NDCG@10 (challenger - champion)", xlabel="delta", ylabel="users")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
