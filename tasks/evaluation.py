"""Evaluation and export tasks: every model scored on the same split in this run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from transformers import BertTokenizerFast

from adapters import tracking
from instructrec.config import Config
from instructrec.evaluation.evaluate import (
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
    scored_in_batches,
    without_words,
)
from instructrec.evaluation.gate import paired_bootstrap
from instructrec.evaluation.reports import (
    diversity_tradeoff_figure,
    markdown_table,
    metrics_by_model,
    ndcg_by_type_and_slice,
    report_rows,
    score_histograms,
    slice_rows,
)
from instructrec.models.model import item_tower, load_scorer
from instructrec.models.sasrec import SASRec, SASRecScorer
from instructrec.serving import optimize
from instructrec.serving.export import OnnxScorer, Session, cuda_usable, export_onnx, latency_ms, make_session
from instructrec.serving.lists import ItemSpace
from instructrec.serving.optimize import VariantReport
from instructrec.serving.parity import Parity, parity
from instructrec.serving.recommend import BUNDLE_MANIFEST
from instructrec.training.prepare import Prepared
from model_registry import registry
from tasks.training import Trained

CHALLENGER, CHAMPION, POPULARITY, SASREC = "challenger", "champion", "popularity", "sasrec"
BASELINES = (POPULARITY, SASREC)
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


def _lists_and_reasons(cfg: Config, prepared: Prepared, scorer: Scorer, space: ItemSpace, run_id: str) -> None:
    """The challenger's accuracy/diversity trade-off under MMR, and how faithful its explanations are."""
    case = prepared.test_cases[HEADLINE]
    curve = diversity_tradeoff(scorer, case, space, DIVERSITY_WEIGHTS, cfg.serve.rerank_candidates)
    tracking.log_table(run_id, curve, "evaluation/diversity_tradeoff.json")
    tracking.log_figure(run_id, diversity_tradeoff_figure(curve, HEADLINE), "evaluation/diversity_tradeoff.png")
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
    histograms = score_histograms({CHALLENGER: challenger_scorer, **here}, prepared.test_cases[HEADLINE])
    tracking.log_figure(run_id, histograms, "evaluation/score_histograms.png")
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
    rows = report_rows(reports)
    tracking.log_table(run_id, rows, "evaluation/metrics_table.json")
    tracking.log_csv(run_id, rows, "evaluation/metrics_table.csv")
    tracking.log_table(run_id, slice_rows(reports), "evaluation/slices_table.json")
    tracking.log_text(run_id, markdown_table(reports), "evaluation/table.md")
    tracking.log_json(run_id, {n: r.to_dict() for n, r in reports.items()}, "evaluation/report.json")
    tracking.log_figure(run_id, ndcg_by_type_and_slice(reports), "evaluation/ndcg_by_type_and_slice.png")
    tracking.log_figure(run_id, metrics_by_model(reports), "evaluation/metrics_by_model.png")
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
            parity=lambda s=scorer: parity(reference_scores, scored_in_batches(s, texts, hist)),
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
    reference_scores = scored_in_batches(eager, texts, hist)
    check = parity(reference_scores, scored_in_batches(onnx, texts, hist))
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
        serving = optimize.serving_choices(variants)
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
