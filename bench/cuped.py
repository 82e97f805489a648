"""What would CUPED save the online test? Variance of the like-rate difference with and without each user's
like rate before the experiment as the covariate (`abtest.cuped`), on simulated users.

    make bench-cuped          # ~1 min on 2 cores
    .venv/bin/python bench/cuped.py --reps 100

The world is bench/ab_validity.py's: a like propensity per user (Beta, mean 5%,
intra-user correlation rho), a geometric number of 10-item lists; here each user
also has a pre-experiment period with the same propensity, for a share of
returning users (the rest are new: no covariate). Each replication is one test
(--users per arm, challenger +10%). Reported per cell: the variance ratio
adjusted / unadjusted measured across replications (what the same information
costs in users or time with CUPED) beside the one each test reports, and the
spread of the adjusted z around the truth (1.0 when its standard error is honest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from ab_validity import ITEMS_PER_LIST, LIKE_RATE, RHOS, propensity

from instructrec.online.abtest import cuped
from ops import bench_pages
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]


def arm(rng: np.random.Generator, n: int, rho: float, lift: float, returning: float, pre_lists: float):
    """(likes, impressions) during the test and (likes, impressions) before it, per user."""
    p = propensity(rng, LIKE_RATE, rho, n)
    pre = rng.geometric(1.0 / pre_lists, n) * ITEMS_PER_LIST * (rng.random(n) < returning)
    now = rng.geometric(1.0 / 3.0, n) * ITEMS_PER_LIST
    likes = rng.binomial(now, np.minimum(p * (1.0 + lift), 1.0)).astype(float)
    return (likes, now.astype(float)), (rng.binomial(pre, p).astype(float), pre.astype(float))


def cell(rho: float, returning: float, pre_lists: float, args) -> dict:
    rng = np.random.default_rng([args.seed, int(rho * 1000), int(returning * 100), int(pre_lists)])
    raw, adjusted, reported, se = [], [], [], []
    for _ in range(args.reps):
        (a, a_pre), (b, b_pre) = (arm(rng, args.users, rho, lift, returning, pre_lists) for lift in (0.0, 0.10))
        adj = cuped(a, b, a_pre, b_pre)
        raw.append(adj.raw.diff)
        adjusted.append(adj.diff)
        reported.append(adj.variance_ratio)
        se.append(adj.se)
    measured = float(np.var(adjusted) / np.var(raw))
    truth = float(np.mean(raw))  # the unadjusted difference is unbiased: its mean over the tests is the truth
    return {
        "rho": rho,
        "returning": returning,
        "pre_lists": pre_lists,
        "variance_ratio_measured": measured,
        "variance_ratio_reported": float(np.mean(reported)),
        "users_saved": 1.0 - measured,
        "adjusted_bias": float(np.mean(adjusted)) - truth,
        "adjusted_z_sd": float(np.std((np.asarray(adjusted) - truth) / np.asarray(se))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=300, help="simulated tests per cell")
    ap.add_argument("--users", type=int, default=2000, help="per arm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    cells = [
        cell(rho, returning, pre_lists, args)
        for rho in RHOS
        for returning, pre_lists in ((0.5, 3.0), (1.0, 3.0), (1.0, 12.0))
    ]
    report = {"reps": args.reps, "users_per_arm": args.users, "cells": cells}
    print(bench_pages.cuped(write_report(Path(args.out) / "cuped.json", "cuped", report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
