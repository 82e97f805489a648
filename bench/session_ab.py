"""Session adaptation, A/B on simulated users: does the next list's like rate rise when reactions act at once?

    .venv/bin/python bench/session_ab.py                      # cpu profile, its own home (trains once)
    .venv/bin/python bench/session_ab.py --pages 8 --seed 0

The world of `make demo` (instructrec.online.simulate): a model is trained on every
user's past; each simulated user then plays one session of --pages lists
against `instructrec serve`, reacting to each list from their unseen future
(like / more like this / dislike, a request in words after the first list)
before asking for the next. The service splits users 50/50 (hashed, its own
experiment) into "adapted" (likes join the history and lift neighbours,
dislikes demote neighbours, the request stands) and "static" (a reaction only
hides the judged item); same model, same users' dice. Reported: like rate per
arm on the lists after the first (where the arms can differ) and on the first
(where they cannot: a sanity check), the difference tested with users as the
unit (per-user sums, delta-method variance: the online gate's statistics) and
the design effect against a test that treats impressions as independent, the smallest
relative lift this many users detect (80% power, two-sided 5%), and the
latency of the next /recommend after a reaction at --concurrency clients.
Each run starts from an empty feedback log (an earlier run's is kept beside
it as feedback-before-<time>/), since sessions are rebuilt from the log.
Writes bench/results/session_ab.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from instructrec.config import PROFILES, load_config
from instructrec.online.abtest import Effect, ratio
from instructrec.online.simulate import Policy, play_sessions
from model_registry import registry
from ops.demo import build_world, free_port, start_service, wait_for
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]


def detectable_lift(effect: Effect, z_alpha: float = 1.96, z_power: float = 0.8416) -> float:
    """Smallest relative difference a two-sided 5% test finds with 80% power at this size, from the user-level
    standard error."""
    if not effect.champion.value > 0 or not math.isfinite(effect.se):
        return float("nan")
    return (z_alpha + z_power) * effect.se / effect.champion.value


def arm_table(stats, pages: range) -> dict:
    """Like rate per session arm over the given pages (0-based), and the comparison between the arms with users as
    the unit (the delta method, as the online gate reads it)."""
    out: dict = {}
    sums = {arm: stats.user_sums(arm, pages) for arm in ("static", "adapted")}
    for arm, (likes, shown) in sums.items():
        out[arm] = {
            "users": int(len(shown)),
            "impressions": int(shown.sum()),
            "likes": int(likes.sum()),
            "like_rate": float(likes.sum() / shown.sum()) if shown.sum() else float("nan"),
        }
    eff = Effect(ratio(*sums["static"]), ratio(*sums["adapted"]))
    naive = math.sqrt(
        sum(
            r.value * (1 - r.value) / max(out[a]["impressions"], 1)
            for a, r in zip(sums, (eff.champion, eff.challenger))
        )
    )
    out["relative_lift"] = eff.lift
    out["lift_ci95"] = list(eff.lift_interval(1.96, 1.96))
    out["z"], out["p_two_sided"] = eff.z, float(math.erfc(abs(eff.z) / math.sqrt(2.0)))
    out["design_effect"] = (eff.se / naive) ** 2 if naive > 0 else float("nan")  # variance vs impressions as trials
    out["detectable_relative_lift"] = detectable_lift(eff)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=PROFILES)
    ap.add_argument("--home", default=str(ROOT / ".instructrec-session-ab"))
    ap.add_argument(
        "--pages",
        type=int,
        default=8,
        help="lists per session (7 later lists x 10 items: ~30k impressions per arm on ML-100k)",
    )
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1, help="service processes (serve.workers)")
    ap.add_argument("--onnx-threads", type=int, default=0, help="ONNX Runtime threads per model (serve.onnx_threads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--future-share", type=float, default=0.3)
    args = ap.parse_args()
    os.environ["INSTRUCTREC_HOME"] = args.home
    from flows.training import training_pipeline

    cfg = load_config(args.profile)
    registry.connect(cfg.paths.tracking_uri)
    data, futures, genre_of = build_world(cfg, args.future_share)
    if registry.get_alias(registry.CHAMPION) is None:
        print(training_pipeline(profile=args.profile, data=str(data)).render())
    champion = registry.get_alias(registry.CHAMPION)
    if champion is None:
        raise SystemExit("the model trained on the past did not pass the gate; nothing to serve")
    if cfg.paths.feedback.exists():  # sessions are rebuilt from the log: each A/B starts from no reactions
        cfg.paths.feedback.rename(cfg.paths.home / f"feedback-before-{time.strftime('%Y%m%dT%H%M%S')}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    experiment = f"session-ab-{args.seed}"
    settings = {
        "serve.session_share": 0.5,
        "serve.experiment": experiment,
        "serve.challenger_share": 0.0,
        "serve.workers": args.workers,
        "serve.onnx_threads": args.onnx_threads,
    }
    service = start_service(args.profile, port, cfg.paths.home / "service.log", settings)
    try:
        wait_for(url)
        users = sorted(u for u, f in futures.items() if f.liked or f.evaluation)
        t0 = time.perf_counter()
        stats = play_sessions(url, futures, users, genre_of, Policy(), args.seed, args.pages, args.concurrency)
        elapsed = time.perf_counter() - t0
    finally:
        service.terminate()
        service.wait(timeout=30)
    ms = np.asarray(stats.next_list_ms)
    result = {
        "profile": args.profile,
        "model_version": champion.version,
        "users": len(users),
        "pages": args.pages,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "onnx_threads": args.onnx_threads,
        "seed": args.seed,
        "failures": stats.failures,
        "elapsed_s": elapsed,
        "later_lists": arm_table(stats, range(1, args.pages)),
        "first_list": arm_table(stats, range(1)),
        "by_page": {
            arm: [stats.likes[(arm, p)] / max(stats.impressions[(arm, p)], 1) for p in range(args.pages)]
            for arm in ("static", "adapted")
        },
        "next_list_latency_ms": {
            "n": int(len(ms)),
            "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()),
        },
    }
    later = result["later_lists"]
    print(
        f"{len(users)} users x {args.pages} lists, model v{champion.version} ({args.profile}), {elapsed:.0f} s, "
        f"{stats.failures} failed requests"
    )
    for name in ("first_list", "later_lists"):
        t = result[name]
        print(
            f"  {name:11s} static {t['static']['likes']}/{t['static']['impressions']} = {t['static']['like_rate']:.4f} | "
            f"adapted {t['adapted']['likes']}/{t['adapted']['impressions']} = {t['adapted']['like_rate']:.4f} | "
            f"lift {100 * t['relative_lift']:+.1f}% [{100 * t['lift_ci95'][0]:+.1f}%, {100 * t['lift_ci95'][1]:+.1f}%]  "
            f"z {t['z']:+.2f}  p {t['p_two_sided']:.4f}  (users as the unit; design effect {t['design_effect']:.2f}; "
            f"detectable: {100 * t['detectable_relative_lift']:.1f}%)"
        )
    print(f"  by page: {json.dumps({a: [round(v, 4) for v in r] for a, r in result['by_page'].items()})}")
    lat = result["next_list_latency_ms"]
    print(
        f"  next list after a reaction, {args.concurrency} clients, {args.workers} service process(es): p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms "
        f"(target p99 < 50 ms) over {lat['n']} requests"
    )
    significant = later["p_two_sided"] < 0.05
    verdict = (
        "no significant difference"
        if not significant
        else "adaptation raises the like rate"
        if later["relative_lift"] > 0
        else "adaptation lowers the like rate"
    )
    print(f"  verdict on the later lists: {verdict}")
    write_report(ROOT / "bench" / "results" / "session_ab.json", "session_ab", result)
    return 0 if stats.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
