"""New items served without retraining: items the model never trained on, scored through their text.

    .venv/bin/python bench/new_items.py                       # ML-100k, cpu profile, 10% of items held out
    .venv/bin/python bench/new_items.py --share 0.1 --seed 0 --set train.epochs=10

A seeded 10% of the catalogue is held out: every interaction with those items
is removed before training, so neither their ids nor their texts are ever
seen (not even as softmax negatives). The trained scorer is then extended by
`instructrec.models.model.extend_catalogue` (text features through the trained item
projection, no id embedding, the median bias) and evaluated on the standard
split of the full data (DESIGN section 7: temporal leave-one-out, full
ranking, earlier items excluded) for the users whose test item is a held-out
one, beside popularity on the same cases: from the counts the model trained on
(held-out items have none) and from the full training counts (what a model
that knew the new items' traffic would start from). Every other user's
NDCG@10 is reported too (does adding items hurt them?). Writes
bench/results/new_items.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from instructrec.config import PROFILES, load_config
from instructrec.data import schema
from instructrec.data.snapshot import snapshot_raw
from instructrec.data.sources import fetch_raw, read_tables
from instructrec.evaluation.evaluate import EvalCase, PopularityScorer, TorchScorer, evaluate
from instructrec.models.model import extend_catalogue
from instructrec.training.prepare import prepare
from instructrec.training.train import FitRun, fit, new_scorer, representation_settings
from ops.cli import parse_overrides
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]

TYPES = ("P1/I0", "P1/I2", "P0/I2")


def rows_of(case: EvalCase, keep: np.ndarray) -> EvalCase:
    r = np.flatnonzero(keep)
    return EvalCase(
        case.type,
        case.users[r],
        [case.texts[i] for i in r],
        [case.templates[i] for i in r],
        case.history[r],
        case.target[r],
        [case.exclude[i] for i in r],
        case.negatives[r],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="movielens-100k")
    ap.add_argument("--profile", default="cpu", choices=PROFILES)
    ap.add_argument("--share", type=float, default=0.1, help="share of items held out of training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.profile, overrides=parse_overrides(args.set))
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"types": TYPES, "held_out_templates": False})})
    snap = snapshot_raw(fetch_raw(args.data, cfg.paths.downloads), cfg.paths.snapshots)
    tables = read_tables(snap.kind, snap.raw_dir)
    items, inter = tables.items, tables.interactions
    rng = np.random.default_rng(args.seed)
    ids = sorted(items[schema.ITEM].to_list())
    held = set(rng.choice(ids, int(len(ids) * args.share), replace=False).tolist())
    is_held = pl.col(schema.ITEM).is_in(pl.Series(sorted(held)).implode())

    t0 = time.perf_counter()
    full = prepare(cfg, inter, items, tables.item_noun)  # the evaluation split, every item
    seen = prepare(cfg, inter.filter(~is_held), items.filter(~is_held), tables.item_noun)  # what the model trains on
    model, tok = new_scorer(cfg, seen.catalogue)
    settings = replace(representation_settings(cfg), stage="new-items")
    from tasks.training import validator  # the pipeline's validation (a task-layer helper, no Prefect run needed)

    result = fit(model, tok, seen.examples, settings, validator(seen, tok, cfg, None), FitRun(progress=False))
    trained_s = time.perf_counter() - t0
    new_ids = [i for i in full.catalogue.item_ids if i in held]
    texts = [full.catalogue.texts[full.catalogue.index[i] - 1] for i in new_ids]
    grown = extend_catalogue(model, tok, texts)
    scorer = TorchScorer("scorer+new items", grown, tok, seen.catalogue.item_ids + new_ids, full.catalogue.item_ids)
    before = TorchScorer("scorer", model, tok, seen.catalogue.item_ids, full.catalogue.item_ids)
    known_pop = np.zeros_like(full.split.popularity)
    known_pop[[full.catalogue.index[i] for i in seen.catalogue.item_ids]] = seen.split.popularity[1:]
    held_idx = np.asarray([full.catalogue.index[i] for i in new_ids])
    out: dict = {
        "data": args.data,
        "profile": args.profile,
        "held_out_items": len(new_ids),
        "items": full.catalogue.n_items,
        "seed": args.seed,
        "train_seconds": trained_s,
        "best_valid_ndcg@10": result.best_metric,
        "by_type": {},
    }
    for type_, case in full.test_cases.items():
        new_case = rows_of(case, np.isin(case.target, held_idx))
        old_case = rows_of(case, ~np.isin(case.target, held_idx))
        row = {"new_item_users": len(new_case.users), "other_users": len(old_case.users)}
        if len(new_case.users):
            for name, s in (
                ("scorer", scorer),
                ("popularity_trained_counts", PopularityScorer(known_pop)),
                ("popularity_full_counts", PopularityScorer(full.split.popularity)),
            ):
                rep = evaluate(s, {type_: new_case}, full.split)
                row[f"new/{name}/ndcg@10"], row[f"new/{name}/hr@10"] = rep.overall["ndcg@10"], rep.overall["hr@10"]
        for name, s in (("scorer", scorer), ("scorer_without_new_items", before)):
            row[f"other/{name}/ndcg@10"] = evaluate(s, {type_: old_case}, full.split).overall["ndcg@10"]
        out["by_type"][type_] = row
    print(
        f"{args.data}: {len(new_ids)} of {full.catalogue.n_items} items held out of training (seed {args.seed}); "
        f"trained in {trained_s:.0f} s, best validation NDCG@10 {result.best_metric:.4f}"
    )
    print(
        "| type | users (new item) | scorer + text vectors | popularity (trained counts) | popularity (full counts) "
        "| other users: scorer + new | scorer alone |"
    )
    print("|---|---|---|---|---|---|---|")
    for type_, r in out["by_type"].items():
        new = [
            f"{r.get(f'new/{n}/ndcg@10', float('nan')):.4f}"
            for n in ("scorer", "popularity_trained_counts", "popularity_full_counts")
        ]
        print(
            f"| {type_} | {r['new_item_users']} | "
            + " | ".join(new)
            + f" | {r['other/scorer/ndcg@10']:.4f} | {r['other/scorer_without_new_items/ndcg@10']:.4f} |"
        )
    write_report(ROOT / "bench" / "results" / "new_items.json", "new_items", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
