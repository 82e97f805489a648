"""How much a stated taste (P2/I0) says about the next item beyond popularity, on the champion's data.

    make bench-taste                         # the champion of `make run` (INSTRUCTREC_HOME=.instructrec)

P2/I0 asks for the next item given only the history's dominant genres, in words
("I really like Drama and Comedy movies"). Three rankers on the protocol's own
P2/I0 cases (validation and test, full ranking, the user's earlier items
excluded), NDCG@10:

- popularity (train counts), the baseline the gate compares with;
- popularity plus beta per stated genre the item has: what the words could add
  to popularity if they were read perfectly, for a grid of beta;
- the champion's scores plus lambda x popularity (both standardised per row),
  lambda picked on validation and reported on test;
- popularity with each training event weighted by its recency (exponential
  decay, a grid of half-lives): whether the test targets, the latest events,
  follow what is popular lately rather than overall.

If no beta lifts popularity on test, no scorer that reads the taste can beat
popularity by reading it. Writes bench/results/stated_taste.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
from request_classes import champion_data

from instructrec.config import load_config
from instructrec.data import schema
from instructrec.data.split import Catalogue, chronological
from instructrec.evaluation import metrics
from instructrec.evaluation.evaluate import EvalCase, build_cases
from instructrec.language.instructions import stated_taste
from instructrec.serving.recommend import Recommender
from instructrec.training.prepare import VALID_SEED_OFFSET

ROOT = Path(__file__).resolve().parents[1]
TYPE = "P2/I0"
BETAS = (0.0, 0.1, 0.25, 0.5, 1.0)
LAMBDAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
HALF_LIVES_DAYS = (7, 14, 30, 60, 90, 180)


def ndcg(scores: np.ndarray, case: EvalCase) -> float:
    """Mean NDCG@10 of the target, the user's earlier items excluded (the protocol's full ranking)."""
    scores = scores.astype(np.float64, copy=True)
    for row, seen in enumerate(case.exclude):
        scores[row, seen - 1] = np.nan
    ranks = metrics.target_ranks(scores, case.target - 1)
    return float(metrics.per_row(ranks, metrics.FULL_METRICS)["ndcg@10"].mean())


def standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)


def recent_popularity(interactions: pl.DataFrame, catalogue: Catalogue, half_life_days: float) -> np.ndarray:
    """[n_items]: training events (each user's all but last two, as the split) weighted 2^(-age / half-life),
    the age counted from the newest training event."""
    events = (
        interactions.with_columns(
            pl.col(schema.ITEM).replace_strict(catalogue.index, return_dtype=pl.Int64).alias("idx")
        )
        .pipe(chronological)
        .with_columns(pl.int_range(pl.len()).over(schema.USER).alias("pos"), pl.len().over(schema.USER).alias("n"))
        .filter((pl.col("n") < 3) | (pl.col("pos") < pl.col("n") - 2))
    )
    seconds = events[schema.TIMESTAMP].dt.epoch("s").to_numpy().astype(np.float64)
    weight = np.exp2(-(seconds.max() - seconds) / (half_life_days * 86400.0))
    counts = np.bincount(events["idx"].to_numpy(), weights=weight, minlength=catalogue.n_items + 1)
    return standardised(np.log1p(counts[1:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    cfg = load_config(args.profile)
    e = cfg.eval
    files, catalogue, interactions, split = champion_data(cfg)
    rec = Recommender.load(files.onnx_file, files.bundle, interactions, files.version)
    pop = standardised(np.log1p(split.popularity[1:].astype(np.float64)))
    genres = {g: k for k, g in enumerate(sorted({g for gs in catalogue.genres for g in gs}))}
    has = np.zeros((catalogue.n_items, len(genres)))
    for i, gs in enumerate(catalogue.genres):
        has[i, [genres[g] for g in gs]] = 1.0

    recent = {h: recent_popularity(interactions, catalogue, h) for h in HALF_LIVES_DAYS}
    out: dict[str, dict] = {}
    for target, seed in (("valid", e.seed + VALID_SEED_OFFSET), ("test", e.seed)):
        # every type drawn as the pipeline draws them, so these are its P2/I0 cases exactly
        case = build_cases(split, e.types, rec.max_history, seed, e.sampled_negatives, target=target)[TYPE]
        seen = [split.train[u] if target == "valid" else split.history_before_test(u) for u in case.users]
        taste = np.zeros((len(case.users), len(genres)))
        for row, history in enumerate(seen):
            taste[row, [genres[g] for g in stated_taste(history[-50:], catalogue)]] = 1.0
        matched = taste @ has.T  # [users, items]: how many stated genres each item has
        model = standardised(
            np.concatenate(
                [
                    rec.scorer.score(case.texts[s : s + 256], case.history[s : s + 256])
                    for s in range(0, len(case.texts), 256)
                ]
            )
        )
        out[target] = {
            "users": len(case.users),
            "popularity": ndcg(np.broadcast_to(pop, matched.shape), case),
            "popularity_plus_taste": {str(b): ndcg(pop + b * matched, case) for b in BETAS},
            "champion_plus_popularity": {str(lam): ndcg(model + lam * pop, case) for lam in LAMBDAS},
            "recent_popularity": {str(h): ndcg(np.broadcast_to(recent[h], matched.shape), case) for h in recent},
        }
    blends = out["valid"]["champion_plus_popularity"]
    picked = max(blends, key=blends.__getitem__)
    out["picked_lambda_on_valid"] = {"lambda": float(picked), "test": out["test"]["champion_plus_popularity"][picked]}
    out["model_version"] = files.version
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "stated_taste.json").write_text(json.dumps(out, indent=2))
    for target in ("valid", "test"):
        r = out[target]
        print(f"{target} ({r['users']} users): popularity {r['popularity']:.4f}")
        print(
            "  popularity + beta x stated genres: "
            + ", ".join(f"{b}: {v:.4f}" for b, v in r["popularity_plus_taste"].items())
        )
        print(
            "  champion + lambda x popularity:    "
            + ", ".join(f"{k}: {v:.4f}" for k, v in r["champion_plus_popularity"].items())
        )
        print(
            "  popularity, half-life in days:     "
            + ", ".join(f"{h}: {v:.4f}" for h, v in r["recent_popularity"].items())
        )
    print(f"lambda picked on validation: {picked}; test NDCG@10 {out['picked_lambda_on_valid']['test']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
