"""Is the online gate's error rate what it says? Monte-Carlo A/B tests through the project's own decision code.

    make bench-ab                     # 10,000 experiments per cell (~1.5 h on 2 cores)
    .venv/bin/python bench/ab_validity.py --experiments 500 --aa-experiments 500    # a quick look

Each simulated experiment is a small world of users, not of impressions:
- users arrive over time (a daily cycle: the hourly rate swings +-50% around
  --users-per-hour), each asks for a geometric number of 10-item lists (mean 3)
  spread over the following hours;
- each user has their own like propensity, drawn from a Beta with mean 5% whose
  intra-user correlation is rho (rho = 1 / (a + b + 1)); rho = 0 is a constant
  propensity, i.e. independent impressions. Dislikes alike (mean 2%);
- users are split by the service's own hash (`abtest.assign_arm`, a fresh salt
  per experiment); the challenger multiplies every user's like propensity by
  (1 + lift);
- the test is sized from --prior-hours of champion-only traffic before it
  (`experiment.plan_test`), then looked at hourly and after every
  --event-looks feedback events (the event trigger), with `experiment.look`,
  the gate's own code, until it promotes, rejects, or reaches the horizon.

Cells: rho in {0, 0.01, 0.05, 0.17} x lift in {0 (A/A), -5%, +mde (power),
-mde (harm)}. Reported per cell: share promoted with its 95% Monte-Carlo
interval (Wilson), share stopped early at the lower boundary (harm or futility),
mean users and impressions at the decision beside the fixed-horizon (single
look) design's, and the looks taken. Writes bench/results/ab_validity.json,
the table of docs/gate.md as bench/results/ab_validity.md, and
bench/results/ab_validity.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from instructrec.config import OnlineConfig
from instructrec.online.abtest import CHALLENGER_ARM, ArmUsers, assign_arm, experiment_id
from instructrec.online.experiment import Experiment, look, plan_test
from ops import bench_pages
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]
RHOS = (0.0, 0.01, 0.05, 0.17)
LIKE_RATE, DISLIKE_RATE, ITEMS_PER_LIST, MEAN_LISTS, GAP_HOURS = 0.05, 0.02, 10, 3.0, 4.0
START = datetime(2026, 1, 5, tzinfo=UTC)


def propensity(rng: np.random.Generator, mean: float, rho: float, n: int) -> np.ndarray:
    if rho <= 0:
        return np.full(n, mean)
    total = (1.0 - rho) / rho
    return rng.beta(mean * total, (1.0 - mean) * total, n)


def arrivals(rng: np.random.Generator, hours: float, per_hour: float, offset: float = 0.0) -> np.ndarray:
    """Arrival times (h) of a Poisson process whose rate follows a daily cycle (thinning)."""
    peak = per_hour * 1.5
    t = np.sort(rng.uniform(0.0, hours, rng.poisson(peak * hours)))
    keep = rng.random(len(t)) < (1.0 + 0.5 * np.sin(2 * np.pi * (t + offset) / 24.0)) / 1.5
    return t[keep]


def lists_of(rng: np.random.Generator, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user index, time) of every list: a geometric count per user, exponential gaps after arrival."""
    count = rng.geometric(1.0 / MEAN_LISTS, len(start))
    user = np.repeat(np.arange(len(start)), count)
    gaps = rng.exponential(GAP_HOURS, len(user))
    first = np.r_[0, np.cumsum(count)[:-1]]
    gaps[first] = 0.0
    run = np.cumsum(gaps)
    return user, start[user] + run - np.repeat(run[first], count)


def arm_users(per_user: np.ndarray, rows: np.ndarray) -> ArmUsers:
    """One arm's per-user sums (lists, likes, dislikes) as the gate reads them."""
    lists, likes, dislikes = per_user[:, rows]
    return ArmUsers(lists * ITEMS_PER_LIST, likes, dislikes, lists, np.zeros(len(lists)))


def one_experiment(index: int, rho: float, lift: float, args, policy: OnlineConfig) -> dict:
    rng = np.random.default_rng([args.seed, index, int(rho * 1000), int(round(lift * 1000)) + 1000])
    # champion-only traffic before the test sizes it
    pre_start = arrivals(rng, args.prior_hours, args.users_per_hour)
    pre_user, _ = lists_of(rng, pre_start)
    p_pre = propensity(rng, LIKE_RATE, rho, len(pre_start))
    n_pre = np.bincount(pre_user, minlength=len(pre_start))
    traffic = ArmUsers(
        n_pre * float(ITEMS_PER_LIST),
        rng.binomial(n_pre * ITEMS_PER_LIST, p_pre).astype(float),
        np.zeros(len(n_pre)),
        n_pre.astype(float),
        np.zeros(len(n_pre)),
    )
    prior = (traffic, args.prior_hours)
    plan_hours = plan_test(traffic, args.prior_hours, policy, 0.5, "prior").hours or policy.max_duration_hours
    horizon = min(policy.max_duration_hours, 2.0 * plan_hours)  # the world runs this long (2x the projection)
    start = arrivals(rng, horizon, args.users_per_hour)
    salt = experiment_id("bench", f"{index}")
    p_base = propensity(rng, LIKE_RATE, rho, len(start))
    p_dislike = propensity(rng, DISLIKE_RATE, rho, len(start))
    user, when = lists_of(rng, start)
    order = np.argsort(when, kind="stable")
    user, when = user[order], when[order]
    like_as = {  # each list's likes as the champion's and as the challenger's (the user's arm picks one)
        False: rng.binomial(ITEMS_PER_LIST, p_base[user]).astype(float),
        True: rng.binomial(ITEMS_PER_LIST, np.minimum(p_base[user] * (1.0 + lift), 1.0)).astype(float),
    }
    dislikes_all = rng.binomial(ITEMS_PER_LIST, p_dislike[user]).astype(float)
    arm = np.zeros(len(start), dtype=bool)
    hashed = 0  # users are hashed to arms by the service's own function, as they arrive
    # looks: hourly (the schedule) and after every --event-looks feedback events (the trigger)
    events = np.cumsum(like_as[False] + dislikes_all)
    fired = when[np.searchsorted(events, np.arange(args.event_looks, events[-1], args.event_looks))]
    hourly = np.arange(1.0, horizon + 1.0)
    times = np.concatenate([hourly, fired])
    triggers = np.array(["schedule"] * len(hourly) + ["event"] * len(fired))
    order = np.argsort(times, kind="stable")
    times, triggers = times[order], triggers[order]
    exp = Experiment(salt, "1", "2", START.isoformat(), 0.5)
    per_user = np.zeros((3, len(start)))  # lists, likes, dislikes so far, per user (added look by look)
    out, done = None, 0
    for t, trigger in zip(times, triggers, strict=True):
        n = int(np.searchsorted(when, t, side="right"))
        need = max(int(np.searchsorted(start, t, side="right")), int(user[:n].max(initial=-1)) + 1)
        if need > hashed:
            arm[hashed:need] = [assign_arm(f"u{index}-{i}", salt, 0.5) == CHALLENGER_ARM for i in range(hashed, need)]
            hashed = need
        new = slice(done, n)
        u = user[new]
        liked = np.where(arm[u], like_as[True][new], like_as[False][new])
        for row, weights in enumerate((None, liked, dislikes_all[new])):
            per_user[row, :hashed] += np.bincount(u, weights, hashed)
        done = n
        active = per_user[0, :hashed] > 0
        champion = arm_users(per_user[:, :hashed], active & ~arm[:hashed])
        challenger = arm_users(per_user[:, :hashed], active & arm[:hashed])
        out = look(exp, champion, challenger, START + timedelta(hours=float(t)), policy, str(trigger), prior)
        if out.verdict != "continue":
            break
    assert out is not None and exp.plan is not None  # the plan comes from the prior traffic at the first look
    counted = [lk for lk in exp.looks]
    final = counted[-1] if counted else None
    kind = "none"
    if out.verdict == "reject" and final is not None:
        kind = "harm" if "harm" in final.reason else ("futility" if "futility" in final.reason else "horizon")
        kind = "srm" if "sample ratio" in final.reason else ("guardrail" if "guardrail" in final.reason else kind)
    return {
        "verdict": out.verdict,
        "kind": kind,
        "early": bool(final is not None and not final.final),
        "users": sum(final.users) if final else 0,
        "impressions": sum(final.impressions) if final else 0,
        "looks": len(counted),
        "hours": final.hours if final else float("nan"),
        "fixed_users": exp.plan.users / exp.plan.inflation,
        "fixed_impressions": exp.plan.impressions / exp.plan.inflation,
        "planned_users": exp.plan.users,
    }


def _chunk(job: tuple) -> list[dict]:
    start, stop, rho, lift, args, policy = job
    return [one_experiment(i, rho, lift, args, policy) for i in range(start, stop)]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return mid - half, mid + half


def summarise(rows: list[dict], rho: float, lift: float) -> dict:
    n = len(rows)
    promoted = sum(r["verdict"] == "promote" for r in rows)
    lower = sum(r["kind"] in ("harm", "futility") and r["early"] for r in rows)
    harm = sum(r["kind"] == "harm" and r["early"] for r in rows)
    lo, hi = wilson(promoted, n)
    return {
        "rho": rho,
        "lift": lift,
        "experiments": n,
        "promoted": promoted / n,
        "promoted_ci": [lo, hi],
        "stopped_early_lower": lower / n,
        "stopped_early_harm": harm / n,
        "rejected_at_horizon": sum(r["kind"] == "horizon" for r in rows) / n,
        "mean_users": float(np.mean([r["users"] for r in rows])),
        "mean_impressions": float(np.mean([r["impressions"] for r in rows])),
        "fixed_horizon_users": float(np.mean([r["fixed_users"] for r in rows])),
        "fixed_horizon_impressions": float(np.mean([r["fixed_impressions"] for r in rows])),
        "planned_users": float(np.mean([r["planned_users"] for r in rows])),
        "mean_looks": float(np.mean([r["looks"] for r in rows])),
        "mean_hours": float(np.nanmean([r["hours"] for r in rows])),
        "kinds": {k: sum(r["kind"] == k for r in rows) for k in sorted({r["kind"] for r in rows})},
    }


def targets(cells: list[dict], mde: float) -> dict:
    def of(lift):
        return [c for c in cells if math.isclose(c["lift"], lift)]

    return {
        "aa_false_promotion_upper_bound_le_5.5%": all(c["promoted_ci"][1] <= 0.055 for c in of(0.0)),
        "aa_false_promotion_le_5%": all(c["promoted"] <= 0.05 for c in of(0.0)),
        "worse_5%_promoted_le_1%": all(c["promoted"] <= 0.01 for c in of(-0.05)),
        "power_ge_80%": all(c["promoted"] >= 0.80 for c in of(mde)),
        "harm_10%_stopped_early_ge_80%": all(c["stopped_early_lower"] >= 0.80 for c in of(-mde)),
    }


def plot(cells: list[dict], path: Path, mde: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rhos = sorted({c["rho"] for c in cells})
    for lift, label in ((0.0, "A/A"), (-0.05, "5% worse"), (mde, f"+{mde:.0%} (power)"), (-mde, "harm")):
        row = [c for c in cells if math.isclose(c["lift"], lift)]
        xs = [rhos.index(c["rho"]) for c in row]  # evenly spaced: the correlations span two orders of magnitude
        axes[0].errorbar(
            xs,
            [c["promoted"] for c in row],
            yerr=[
                [c["promoted"] - c["promoted_ci"][0] for c in row],
                [c["promoted_ci"][1] - c["promoted"] for c in row],
            ],
            marker="o",
            capsize=3,
            label=label,
        )
        axes[1].plot(xs, [c["mean_users"] / c["fixed_horizon_users"] for c in row], marker="o", label=label)
    axes[0].axhline(0.05, color="grey", ls="--", lw=0.8)
    axes[0].axhline(0.80, color="grey", ls=":", lw=0.8)
    axes[0].set(xlabel="intra-user correlation rho", ylabel="share promoted", title="Promoted")
    axes[1].axhline(1.0, color="grey", ls="--", lw=0.8)
    axes[1].set(
        xlabel="intra-user correlation rho",
        ylabel="users / fixed-horizon users",
        title="Expected sample size vs a single-look test",
    )
    for ax in axes:
        ax.set_xticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=10_000, help="per cell")
    ap.add_argument(
        "--aa-experiments", type=int, default=20_000, help="per A/A cell (its bound is the claim: a tighter interval)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--users-per-hour", type=float, default=200.0)
    ap.add_argument("--prior-hours", type=float, default=48.0, help="champion traffic that sizes the test")
    ap.add_argument("--event-looks", type=int, default=2_000, help="a look after every this many feedback events")
    ap.add_argument("--rhos", type=float, nargs="*", default=list(RHOS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--table", metavar="JSON", help="only print the markdown table of an earlier run's JSON")
    args = ap.parse_args()
    if args.table:
        print(bench_pages.ab_validity(json.loads(Path(args.table).read_text())))
        return 0
    policy = OnlineConfig()
    lifts = (0.0, -0.05, policy.mde, -policy.mde)
    chunk = max(1, args.experiments // (args.workers * 8))
    cells, began = [], time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        for rho in args.rhos:
            for lift in lifts:
                count = args.aa_experiments if lift == 0.0 else args.experiments
                jobs = [(s, min(s + chunk, count), rho, lift, args, policy) for s in range(0, count, chunk)]
                rows = [r for part in pool.map(_chunk, jobs) for r in part]
                cells.append(summarise(rows, rho, lift))
                c = cells[-1]
                print(
                    f"rho {rho:<5} lift {lift:+.2f}: promoted {c['promoted']:.4f} "
                    f"[{c['promoted_ci'][0]:.4f}, {c['promoted_ci'][1]:.4f}], stopped early (lower) "
                    f"{c['stopped_early_lower']:.3f} (harm {c['stopped_early_harm']:.3f}), users {c['mean_users']:.0f} "
                    f"vs fixed {c['fixed_horizon_users']:.0f} (planned {c['planned_users']:.0f}), looks "
                    f"{c['mean_looks']:.1f}, {c['mean_hours']:.1f} h  [{time.perf_counter() - began:.0f} s]",
                    flush=True,
                )
    met = targets(cells, policy.mde)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "policy": policy.model_dump(),
        "world": {
            "like_rate": LIKE_RATE,
            "dislike_rate": DISLIKE_RATE,
            "items_per_list": ITEMS_PER_LIST,
            "mean_lists": MEAN_LISTS,
            "gap_hours": GAP_HOURS,
            "users_per_hour": args.users_per_hour,
            "prior_hours": args.prior_hours,
            "event_looks": args.event_looks,
        },
        "cells": cells,
        "targets": met,
        "seconds": time.perf_counter() - began,
    }
    report = write_report(out / "ab_validity.json", "ab_validity", report)
    (out / "ab_validity.md").write_text(bench_pages.ab_validity(report))
    plot(cells, out / "ab_validity.png", policy.mde)
    print(bench_pages.ab_validity(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
