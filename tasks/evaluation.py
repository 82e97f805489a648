"""Evaluation and export tasks: every model scored on the same split in this run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from transformers import BertTokenizerFast

from adapters import tracking
from instructrec import optimize
from instructrec.config import Config
from instructrec.evaluate import (
    HEADLINE,
    NO_WORDS,
    EvalReport,
    MappedScorer,
    PopularityScorer,
    Scorer,
    TorchScorer,
    diversity_tradeoff,
    evaluate,
    explanation_faithfulness,
    without_words,
)
from instructrec.export import OnnxScorer, Session, cuda_usable, export_onnx, latency_ms, make_session, parity
from instructrec.gate import Parity, paired_bootstrap
from instructrec.instructions import HELD_OUT
from instructrec.lists import LIST_METRICS, ItemSpace
from instructrec.model import item_tower, load_scorer
from instructrec.optimize import VariantReport
from instructrec.prepare import Prepared
from instructrec.recommend import BUNDLE_MANIFEST
from instructrec.sasrec import SASRec, SASRecScorer
from model_registry import registry
from tasks.training import Trained

CHALLENGER, CHAMPION, POPULARITY, SASREC = "challenger", "champion", "popularity", "sasrec"
BASELINES = (POPULARITY, SASREC)
# full ranking (the headline) and the paper's 1+9 protocol (s_ prefix)
TABLE_COLUMNS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "s_hr@1", "s_ndcg@5")
# beside accuracy, what the top-10 lists are like (instructrec.lists); item vectors: the challenger's item tower
LIST_COLUMNS = LIST_METRICS
DIVERSITY_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


@dataclass
class Evaluations:
    reports: dict[str, EvalReport]  # challenger, champion (if any), popularity
    champion: registry.VersionRef | None
    # the gate's references that are not rows of the table: no-words (the challenger without the words)
    references: dict[str, EvalReport] = field(default_factory=dict)


@dataclass
class Exported:
    path: Path  # plain fp32 graph (the registered model)
    provider: str
    parity: Parity
    latency_ms: float
    champion_latency_ms: float | None
    variants: dict[str, VariantReport] = field(default_factory=dict)
    serving: dict[str, str] = field(default_factory=dict)  # host kind -> variant name


def _report_rows(reports: dict[str, EvalReport]) -> list[dict]:
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


def _plot(reports: dict[str, EvalReport], run_id: str) -> None:
    names = list(reports)
    types = list(next(iter(reports.values())).by_type)
    slices = list(next(iter(reports.values())).slices)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
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
    tracking.log_figure(run_id, fig, "evaluation/ndcg_by_type_and_slice.png")
    plt.close(fig)


def _plot_metrics(reports: dict[str, EvalReport], run_id: str) -> None:
    """Every model side by side on every headline metric (overall, test split)."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(reports)
    for i, (name, rep) in enumerate(reports.items()):
        ax.bar(np.arange(len(TABLE_COLUMNS)) + i * width, [rep.overall[c] for c in TABLE_COLUMNS], width, label=name)
    ax.set_xticks(np.arange(len(TABLE_COLUMNS)) + 0.4 - width / 2, TABLE_COLUMNS)
    ax.set(title="Test metrics, overall: challenger vs champion vs baselines")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tracking.log_figure(run_id, fig, "evaluation/metrics_by_model.png")
    plt.close(fig)


def _plot_scores(scorers: dict[str, Scorer], case, run_id: str, rows: int = 256) -> None:
    """Score histograms: the held-out target item against every other item (separation is what ranks)."""
    texts, hist, target = case.texts[:rows], case.history[:rows], case.target[:rows]
    fig, axes = plt.subplots(1, len(scorers), figsize=(5 * len(scorers), 3.5), squeeze=False)
    for ax, (name, scorer) in zip(axes[0], scorers.items()):
        scores = _batched(scorer, texts, hist)
        hit = np.zeros_like(scores, dtype=bool)
        hit[np.arange(len(target)), target] = True
        known = np.isfinite(scores)  # items a mapped champion never saw score -inf
        ax.hist(scores[~hit & known], bins=60, density=True, alpha=0.6, label="other items")
        ax.hist(scores[hit & known], bins=30, density=True, alpha=0.6, label="held-out target")
        ax.set(title=f"{name}: scores, {case.type} test", xlabel="score", ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tracking.log_figure(run_id, fig, "evaluation/score_histograms.png")
    plt.close(fig)


# A model's headline test metrics in the run (overall: the mean over instruction types); every type, template
# set, k and slice is in the evaluation tables (metrics_table.json/.csv, table.md, slices_table.json, report.json).
HEADLINE_METRICS = ("ndcg@10", "hr@10")


def _log_report(run_id: str, name: str, rep: EvalReport) -> None:
    tracking.log_metrics(run_id, {f"test/{name}/{k}": rep.overall[k] for k in HEADLINE_METRICS})


def _log_deltas(run_id: str, reports: dict[str, EvalReport]) -> None:
    """The challenger's overall test NDCG@10 minus each other model's (champion, baselines; same test users):
    `test/challenger/delta_ndcg@10_vs_<model>`. The gate's own paired-bootstrap numbers: gate/decision.json."""
    ours = reports[CHALLENGER].overall["ndcg@10"]
    tracking.log_metrics(
        run_id,
        {
            f"test/{CHALLENGER}/delta_ndcg@10_vs_{n}": ours - r.overall["ndcg@10"]
            for n, r in reports.items()
            if n != CHALLENGER
        },
    )


def _slice_rows(reports: dict[str, EvalReport]) -> list[dict]:
    """One row per (model, slice): cold/warm users, long-tail/head targets."""
    return [
        {"model": name, "slice": s, "ndcg@10": v["ndcg@10"], "users": v.get("n")}
        for name, rep in reports.items()
        for s, v in rep.slices.items()
    ]


def champion_scorer(cfg: Config, champion: registry.VersionRef, catalogue_ids: list[str], logger) -> Scorer:
    """The champion's PyTorch checkpoint; its registered ONNX graph where this code cannot load the checkpoint
    (a champion of an earlier architecture is still judged on the same split, not skipped)."""
    name = f"{CHAMPION}-v{champion.version}"
    local = registry.download_checkpoint(champion, tracking.scratch_dir("champion"))
    try:
        model, tokenizer, model_ids = load_scorer(local, cfg.train.device)
        return TorchScorer(name, model, tokenizer, model_ids, catalogue_ids, cfg.train.device)
    except RuntimeError as err:
        logger.warning(
            "champion v%s: checkpoint not loadable by this code (%s); scoring its ONNX graph",
            champion.version,
            str(err).splitlines()[0],
        )
    onnx_dir, bundle = registry.download_serving(champion, tracking.scratch_dir("champion-onnx"))
    manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text())
    tokenizer = BertTokenizerFast.from_pretrained(str(bundle / "tokenizer"), local_files_only=True)
    onnx = OnnxScorer(name, make_session(onnx_dir / "model.onnx"), tokenizer, manifest["max_text_tokens"])
    return MappedScorer(onnx, manifest["item_ids"], catalogue_ids)


def _compare_with_baseline(run_id: str, ours: EvalReport, baseline: EvalReport, cfg: Config) -> None:
    """Per type: mean per-user delta NDCG@10 against the baseline with its paired bootstrap interval."""
    rows = {}
    for key, values in ours.per_user.items():
        mean, lo, hi = paired_bootstrap(
            values - baseline.per_user[key], cfg.gate.n_bootstrap, cfg.gate.confidence, cfg.gate.seed
        )
        rows[key] = {"delta_ndcg@10": mean, "ci_low": lo, "ci_high": hi, "users": int(len(values))}
    tracking.log_json(
        run_id,
        {"baseline": baseline.name, "confidence": cfg.gate.confidence, "by_type": rows},
        f"evaluation/vs_{baseline.name}.json",
    )
    head = rows.get(HEADLINE)
    if head:
        get_run_logger().info(
            "%s vs %s: delta NDCG@10 %+.4f, %.0f%% CI [%+.4f, %+.4f]",
            HEADLINE,
            baseline.name,
            head["delta_ndcg@10"],
            100 * cfg.gate.confidence,
            head["ci_low"],
            head["ci_high"],
        )


def item_space(prepared: Prepared, challenger: Trained) -> ItemSpace:
    split = prepared.split
    return ItemSpace.build(
        item_tower(challenger.model), prepared.catalogue.genres, split.popularity[1:], len(split.users)
    )


def _plot_tradeoff(curve: list[dict[str, float]], run_id: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
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
        ylabel=f"NDCG@10 ({HEADLINE}, test)",
        title="MMR re-ranking: accuracy vs diversity (labels: weight)",
    )
    fig.tight_layout()
    tracking.log_figure(run_id, fig, "evaluation/diversity_tradeoff.png")
    plt.close(fig)


def _lists_and_reasons(cfg: Config, prepared: Prepared, scorer: Scorer, space: ItemSpace, run_id: str) -> None:
    """The challenger's accuracy/diversity trade-off under MMR, and how faithful its explanations are."""
    case = prepared.test_cases[HEADLINE]
    curve = diversity_tradeoff(scorer, case, space, DIVERSITY_WEIGHTS, cfg.serve.rerank_candidates)
    tracking.log_table(run_id, curve, "evaluation/diversity_tradeoff.json")
    _plot_tradeoff(curve, run_id)
    faithful = explanation_faithfulness(scorer, case, space, seed=cfg.eval.seed)
    tracking.log_json(run_id, faithful, "evaluation/explanation_faithfulness.json")
    get_run_logger().info(
        "MMR trade-off (%s): %s; explanations: removing the cited history item lowers the item's "
        "score in %.1f%% of %d cases (a random history item: %.1f%%)",
        HEADLINE,
        ", ".join(f"w={p['diversity']:g} NDCG {p['ndcg@10']:.4f} ILD {p['ild_vector@10']:.3f}" for p in curve),
        100 * faithful["cited_lowered_share"],
        faithful["cited_n"],
        100 * faithful["random_lowered_share"],
    )


@task(name="evaluate-model", task_run_name="evaluate-{name}", cache_policy=NO_CACHE)
def evaluate_scorer(name: str, scorer: Scorer, cases: dict, split, cold_max: int, tail: float, space) -> EvalReport:
    """One model on every test case: independent of the others, so the flow's task runner may run them
    side by side (threads here, Ray workers with RayTaskRunner)."""
    return evaluate(scorer, cases, split, cold_max, tail, 256, space)


def evaluation_reports(
    cfg: Config, prepared: Prepared, portable: dict[str, Scorer], here: dict[str, Scorer], space
) -> dict[str, EvalReport]:
    """Each scorer on the test split, the `portable` ones (picklable: PyTorch, counts) submitted to the
    flow's task runner, those `here` (an ONNX session cannot travel) scored in this process meanwhile;
    reports in the order challenger, champion, popularity, SASRec."""
    args = (prepared.test_cases, prepared.split, cfg.data.cold_user_max_train, cfg.data.long_tail_share, space)
    futures = {name: evaluate_scorer.submit(name, scorer, *args) for name, scorer in portable.items()}
    reports = {name: evaluate_scorer(name, scorer, *args) for name, scorer in here.items()}
    reports |= {name: future.result() for name, future in futures.items()}
    return {name: reports[name] for name in (CHALLENGER, CHAMPION, POPULARITY, SASREC) if name in reports}


def evaluate_models(
    cfg: Config, prepared: Prepared, challenger: Trained, sasrec: SASRec | None, run_id: str
) -> Evaluations:
    """Every model on the test split (fanned out as tasks), then the reports, plots and lists logged to the run."""
    logger = get_run_logger()
    ids = prepared.catalogue.item_ids
    space = item_space(prepared, challenger)
    challenger_scorer = TorchScorer(
        CHALLENGER, challenger.model, challenger.tokenizer, ids, ids, cfg.train.device, challenger.text_cache
    )
    portable: dict[str, Scorer] = {
        CHALLENGER: challenger_scorer,
        POPULARITY: PopularityScorer(prepared.split.popularity),
        **({SASREC: SASRecScorer(sasrec)} if sasrec is not None else {}),
    }
    champion = registry.get_alias(registry.CHAMPION)
    here = {CHAMPION: champion_scorer(cfg, champion, ids, logger)} if champion is not None else {}
    reports = evaluation_reports(cfg, prepared, portable, here, space)
    _plot_scores({CHALLENGER: challenger_scorer, **here}, prepared.test_cases[HEADLINE], run_id)
    for name, rep in reports.items():
        _log_report(run_id, name, rep)
        o = rep.overall
        logger.info(
            "%-11s NDCG@10 overall %.4f | %s | lists: diversity %.3f (genres %.3f), coverage %.3f, novelty %.2f",
            name,
            o["ndcg@10"],
            ", ".join(f"{t} {v['ndcg@10']:.4f}" for t, v in rep.by_type.items()),
            o["ild_vector@10"],
            o["ild_genre@10"],
            o["coverage@10"],
            o["novelty@10"],
        )
    _log_deltas(run_id, reports)
    if SASREC in reports:
        _compare_with_baseline(run_id, reports[CHALLENGER], reports[SASREC], cfg)
    tracking.log_table(run_id, _report_rows(reports), "evaluation/metrics_table.json")
    tracking.log_csv(run_id, _report_rows(reports), "evaluation/metrics_table.csv")
    tracking.log_table(run_id, _slice_rows(reports), "evaluation/slices_table.json")
    tracking.log_text(run_id, markdown_table(reports), "evaluation/table.md")
    tracking.log_json(run_id, {n: r.to_dict() for n, r in reports.items()}, "evaluation/report.json")
    _plot(reports, run_id)
    _plot_metrics(reports, run_id)
    _lists_and_reasons(cfg, prepared, challenger_scorer, space, run_id)
    no_words = no_words_report(cfg, prepared, challenger_scorer, run_id)
    return Evaluations(reports, champion, {NO_WORDS: no_words} if no_words is not None else {})


def no_words_report(cfg: Config, prepared: Prepared, scorer: Scorer, run_id: str) -> EvalReport | None:
    """The challenger on every worded test case with its words removed (`evaluate.without_words`): the gate's
    reference for worded types, "the same model without the words"; logged as evaluation/no_words.json, not a
    row of the table. None when no worded type is evaluated."""
    cases = without_words(prepared.test_cases, prepared.catalogue.noun)
    if not cases:
        return None
    report = evaluate(scorer, cases, prepared.split, cfg.data.cold_user_max_train, cfg.data.long_tail_share)
    report.name = NO_WORDS
    tracking.log_json(run_id, report.to_dict(), "evaluation/no_words.json")
    return report


def _parity_inputs(prepared: Prepared, n: int) -> tuple[list[str], np.ndarray]:
    texts, hist = [], []
    for case in prepared.test_cases.values():
        texts += case.texts[:n]
        hist.append(case.history[:n])
    return texts, np.concatenate(hist)


def _batched(scorer, texts: list[str], hist: np.ndarray, size: int = 64) -> np.ndarray:
    return np.concatenate([scorer.score(texts[i : i + size], hist[i : i + size]) for i in range(0, len(texts), size)])


def _check_variants(
    cfg: Config,
    prepared: Prepared,
    challenger: Trained,
    paths: dict[str, Path],
    reference_scores: np.ndarray,
    texts: list[str],
    hist: np.ndarray,
) -> dict[str, VariantReport]:
    """Parity against PyTorch and validation NDCG@10 for every variant this host can run."""
    ids = prepared.catalogue.item_ids
    args = (prepared.valid_cases, prepared.split, cfg.data.cold_user_max_train, cfg.data.long_tail_share)
    reference = evaluate(
        TorchScorer("eager", challenger.model, challenger.tokenizer, ids, ids, cfg.train.device, challenger.text_cache),
        *args,
    ).overall["ndcg@10"]
    reports = {}
    for name, path in paths.items():
        runnable = name not in optimize.NEEDS_GPU or cuda_usable()
        session = make_session(path) if runnable else None
        scorer = OnnxScorer(name, session, challenger.tokenizer, cfg.model.max_text_tokens) if session else None
        reports[name] = optimize.check_variant(
            name,
            path,
            session.provider if session else None,
            parity=lambda s=scorer: parity(reference_scores, _batched(s, texts, hist)),
            valid_ndcg=lambda s=scorer: evaluate(s, *args).overall["ndcg@10"],
            reference_ndcg=reference,
            max_relative_loss=cfg.export.max_relative_loss,
        )
    return reports


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_challenger(
    cfg: Config, prepared: Prepared, challenger: Trained, champion: registry.VersionRef | None, run_id: str
) -> Exported:
    """Export, build the optimised variants, check each against PyTorch, time beside the champion."""
    logger = get_run_logger()
    out_dir = cfg.paths.exports / run_id
    path = export_onnx(challenger.model, challenger.tokenizer, out_dir / "model.onnx")
    session: Session = make_session(path)
    onnx = OnnxScorer(CHALLENGER, session, challenger.tokenizer, cfg.model.max_text_tokens)
    ids = prepared.catalogue.item_ids
    eager = TorchScorer(
        CHALLENGER, challenger.model, challenger.tokenizer, ids, ids, cfg.train.device, challenger.text_cache
    )
    texts, hist = _parity_inputs(prepared, cfg.export.parity_rows_per_type)
    reference_scores = _batched(eager, texts, hist)
    check = parity(reference_scores, _batched(onnx, texts, hist))
    ms = latency_ms(onnx, texts[0], hist[0])
    champion_ms = None
    if champion is not None:
        onnx_dir, _ = registry.download_serving(champion, tracking.scratch_dir("champion-onnx"))
        old = OnnxScorer(
            CHAMPION, make_session(onnx_dir / "model.onnx"), challenger.tokenizer, cfg.model.max_text_tokens
        )
        champion_ms = latency_ms(old, texts[0], hist[0])
    variants, serving = {}, {"cpu": optimize.FP32, "cuda": optimize.FP32}
    if cfg.export.variants:
        bert = challenger.model.bert.config
        paths, fused_ops = optimize.build_variants(
            path, out_dir / "variants", bert.num_attention_heads, bert.hidden_size
        )
        variants = _check_variants(cfg, prepared, challenger, paths, reference_scores, texts, hist)
        serving = {host: optimize.choose_for_serving(variants, host) for host in optimize.SERVING_PREFERENCE}
        tracking.log_json(
            run_id,
            {
                "fused_operators": fused_ops,
                "serving": serving,
                "variants": {k: v.to_dict() for k, v in variants.items()},
            },
            "onnx/variants.json",
        )
        tracking.log_table(run_id, [v.to_dict() for v in variants.values()], "onnx/variants_table.json")
        for name, v in variants.items():  # each variant's numbers: onnx/variants.json (were onnx/<variant>/*)
            logger.info("variant %-5s %s", name, v.reason)
    tracking.log_json(  # parity, latency, size: an artifact (were onnx/* metrics); the gate checks parity
        run_id,
        {
            "provider": session.provider,
            "parity": check.__dict__,
            "latency_p50_ms": ms,
            "champion_latency_p50_ms": champion_ms,
            "size_mb": path.stat().st_size / 2**20,
            "n_instructions": len(texts),
        },
        "onnx/parity.json",
    )
    logger.info(
        "ONNX on %s: max |diff| %.2e, top-10 overlap %.3f, p50 %.2f ms; serving variants %s",
        session.provider,
        check.max_abs_diff,
        check.top10_overlap,
        ms,
        serving,
    )
    return Exported(path, session.provider, check, ms, champion_ms, variants, serving)
