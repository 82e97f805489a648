"""The feedback loop end to end, on a world cut in time (see instructrec.online.simulate).

train on the past -> serve -> simulated users react (from their unseen future)
-> the feedback flow judges the A/B test and tunes a new challenger -> the
service hot-reloads -> next round. Prints like rate and offline NDCG@10 per round.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from instructrec.config import Config, Profile, load_config, merge
from instructrec.data import schema
from instructrec.data.snapshot import snapshot_raw
from instructrec.data.sources import fetch_raw, read_tables
from instructrec.io import write_json, write_parquet
from instructrec.online.simulate import Future, Policy, future_ndcg, play_round, split_world
from model_registry import registry
from model_registry.serving import load_version
from tasks import experiments

WORLD = "world"
# a round of the demo stands for a day or more of traffic: the gate's minimum duration counts rounds, not hours
DEMO_GATE = {"gate": {"online": {"min_duration_hours": 0.0}}}


def build_world(cfg: Config, future_share: float) -> tuple[Path, dict[str, Future], dict[str, tuple[str, ...]]]:
    """Past interactions as a directory source, every user's future kept aside (never trained on)."""
    snap = snapshot_raw(fetch_raw("movielens-100k", cfg.paths.downloads), cfg.paths.snapshots)
    tables = read_tables(snap.kind, snap.raw_dir)
    items = tables.items.drop(schema.ROW, strict=False)
    genre_of = {i: tuple(g or ()) for i, g in items.select(schema.ITEM, schema.GENRES).iter_rows()}
    past, futures = split_world(tables.interactions, genre_of, future_share)
    data = cfg.paths.home / WORLD / "data"
    write_parquet(past.drop(schema.ROW), data / "interactions.parquet")  # in time order: its rows keep the tie order
    write_parquet(items, data / "items.parquet")
    write_json(
        {
            u: {k: sorted(v) if isinstance(v, frozenset) else list(v) for k, v in f.__dict__.items()}
            for u, f in futures.items()
        },
        cfg.paths.home / WORLD / "futures.json",
    )
    return data, futures, genre_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(
    profile: str, port: int, log_file: Path, settings: dict[str, object] | None = None
) -> subprocess.Popen:
    """`instructrec serve` in its own process; settings: config overrides, e.g. {"serve.session_share": 0.5}."""
    cmd = [sys.executable, "-m", "ops.cli", "serve", "--profile", profile, "--port", str(port)]
    cmd += [arg for key, value in (settings or {}).items() for arg in ("--set", f"{key}={value}")]
    return subprocess.Popen(cmd, stdout=log_file.open("ab"), stderr=subprocess.STDOUT, env=dict(os.environ))


def wait_for(url: str, versions: dict[str, str] | None = None, timeout: float = 180.0) -> dict:
    """Poll /health until the service answers (and serves exactly `versions`, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", timeout=5).json()
            served = {arm: m["version"] for arm, m in health["models"].items()}
            if health["status"] == "ok" and (versions is None or served == versions):
                return health
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"service at {url} did not serve {versions or 'a champion'} within {timeout:.0f} s")


def serving_versions() -> dict[str, str]:
    a = registry.aliases()
    out = {"champion": a["champion"]}
    if a.get("challenger") and a["challenger"] != a["champion"]:
        out["challenger"] = a["challenger"]
    return out


def offline_ndcg(cfg: Config, futures: dict[str, Future], groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """NDCG@10 of the champion (and the challenger) against each user's evaluation half.

    Every user's rated reaction-half items are left out of every list, in every
    round, whether they played or not: what changes between rounds is the model.
    """
    out = {}
    for alias, version in serving_versions().items():
        rec = load_version(cfg, registry.get_alias(alias))
        scores = {}
        for name, users in groups.items():
            lists = {
                u: [r["item_id"] for r in rec.recommend(u, None, 10, futures[u].liked | futures[u].disliked)["items"]]
                for u in users
            }
            scores[name] = future_ndcg(lists, futures)
        out[f"{alias} v{version}"] = scores
    return out


def run_demo(
    profile: Profile,
    rounds: int,
    feedback_share: float,
    seed: int,
    overrides: dict | None = None,
    future_share: float = 0.3,
) -> list[dict]:
    from flows.feedback import feedback_loop
    from flows.training import training_pipeline

    overrides = merge(DEMO_GATE, overrides or {})
    cfg = load_config(profile, overrides=overrides)
    registry.connect(cfg.paths.tracking_uri)
    data, futures, genre_of = build_world(cfg, future_share)
    if registry.get_alias(registry.CHAMPION) is None:
        print(training_pipeline(profile=profile, data=str(data), overrides=overrides).render())
    if registry.get_alias(registry.CHAMPION) is None:
        raise SystemExit("the first model did not pass the gate, so there is nothing to serve; see the reasons above")
    rng = np.random.default_rng(seed)
    users = sorted(u for u, f in futures.items() if f.liked or f.evaluation)
    chosen = rng.permutation(users)[: int(len(users) * feedback_share)]
    cohorts = [sorted(c.tolist()) for c in np.array_split(chosen, rounds)]  # a fresh cohort plays each round
    groups = {"feedback": sorted(chosen.tolist()), "no_feedback": sorted(set(users) - set(chosen.tolist()))}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(profile, port, cfg.paths.home / "service.log")
    rows: list[dict] = []
    try:
        wait_for(url, serving_versions())
        before = offline_ndcg(cfg, futures, groups)
        rows.append({"round": 0, "offline_ndcg@10": before, "aliases": registry.aliases()})
        _print_row(rows[-1])
        for r in range(1, rounds + 1):
            serving = serving_versions()
            stats = play_round(url, futures, cohorts[r - 1], genre_of, Policy(), seed * 1000 + r)
            loop = feedback_loop(profile=profile, data=str(data), force=True, overrides=overrides)
            wait_for(url, serving_versions())
            rows.append(
                {
                    "round": r,
                    "serving": serving,
                    "players": len(cohorts[r - 1]),
                    "requests": dict(stats.requests),
                    "impressions": dict(stats.impressions),
                    "likes": dict(stats.likes),
                    "like_rate": stats.like_rate(),
                    "like_rate_by_arm": {a: stats.like_rate(a) for a in stats.impressions},
                    "events": stats.events,
                    "failures": stats.failures,
                    "ab_outcome": loop.online_outcome,
                    "new_challenger": loop.registered,
                    "offline_outcome": loop.offline_outcome,
                    "aliases": registry.aliases(),
                    "offline_ndcg@10": offline_ndcg(cfg, futures, groups),
                }
            )
            _print_row(rows[-1])
    finally:
        service.terminate()
        service.wait(timeout=30)
    write_json(rows, cfg.paths.home / "demo_report.json")
    return rows


def _print_row(row: dict) -> None:
    models = "; ".join(
        f"{m}: feedback users {v['feedback']:.4f}, no-feedback users {v['no_feedback']:.4f}"
        for m, v in row["offline_ndcg@10"].items()
    )
    head = f"round {row['round']}"
    if row["round"]:
        arms = ", ".join(
            f"{a} v{row['serving'][a]} {row['likes'].get(a, 0)}/{n} = {row['like_rate_by_arm'][a]:.4f}"
            for a, n in row["impressions"].items()
        )
        head += (
            f": {row['players']} users played, like rate {row['like_rate']:.4f} ({arms}); A/B gate: {row['ab_outcome']};"
            f" {_tuned(row)}"
        )
    print(f"{head}\n  offline NDCG@10 on the unseen future, {models}\n  aliases {row['aliases']}", flush=True)


def _tuned(row: dict) -> str:
    if not row["new_challenger"]:
        return "no new challenger (the A/B test keeps running)"
    placed = (
        "challenger"
        if row["aliases"].get("challenger") == row["new_challenger"]
        else "no alias (offline checks failed)"
    )
    return f"tuned v{row['new_challenger']}: offline {row['offline_outcome']} -> {placed}"


AA_GATE = {  # the A/A runs in minutes: no daily cycle, a few hundred users, a horizon it can reach
    "gate": {"online": {"min_duration_hours": 0.0, "min_users": 30, "mde": 0.3}},
    "feedback": {"trigger_events": 10**9},  # judge the test only; tune nothing new
}


def serve_as_challenger(cfg: Config, version: str) -> str:
    """Register `version` (the champion) again and make the copy the challenger: an A/A test through the real
    service, feedback log and gate. Its offline decision is the champion's own."""
    copy = registry.register_copy(version)
    since = datetime.now(UTC)
    exp = experiments.open_experiment(cfg, version, copy, since)
    registry.describe(
        copy,
        f"A/A test: v{version} served again as its own challenger (any promotion would be a false one).",
        {
            "run_id": registry.tags(version).get("run_id")
            or registry.client().get_model_version(registry.MODEL_NAME, version).run_id,
            "evaluated_against": version,
            "challenger_since": since.isoformat(),
            "online_gate": "pending",
            "online_experiment": exp.id,
        },
    )
    registry.mark_challenger(copy)
    return copy


def run_aa(profile: Profile, rounds: int, seed: int, overrides: dict | None = None) -> list[dict]:
    """The champion against itself, round by round through the service and the feedback flow: what each look of
    the online gate said (it should never promote)."""
    from flows.feedback import feedback_loop
    from flows.training import training_pipeline

    overrides = merge(AA_GATE, overrides or {})
    cfg = load_config(profile, overrides=overrides)
    registry.connect(cfg.paths.tracking_uri)
    data, futures, genre_of = build_world(cfg, 0.3)
    if registry.get_alias(registry.CHAMPION) is None:
        print(training_pipeline(profile=profile, data=str(data), overrides=overrides).render())
    champion = registry.get_alias(registry.CHAMPION)
    if champion is None:
        raise SystemExit("the first model did not pass the gate, so there is nothing to serve")
    registry.remove_alias(registry.CHALLENGER)
    rng = np.random.default_rng(seed)
    users = rng.permutation(sorted(u for u, f in futures.items() if f.liked or f.evaluation))
    cohorts = [sorted(c.tolist()) for c in np.array_split(users, rounds + 1)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(profile, port, cfg.paths.home / "service-aa.log")
    rows: list[dict] = []
    try:
        wait_for(url, {"champion": champion.version})
        play_round(url, futures, cohorts[0], genre_of, Policy(), seed * 1000)  # champion traffic sizes the test
        copy = serve_as_challenger(cfg, champion.version)
        wait_for(url, {"champion": champion.version, "challenger": copy})
        for r in range(1, rounds + 1):
            stats = play_round(url, futures, cohorts[r], genre_of, Policy(), seed * 1000 + r)
            loop = feedback_loop(profile=profile, data=str(data), overrides=overrides, trigger="manual")
            rows.append(
                {
                    "round": r,
                    "impressions": dict(stats.impressions),
                    "likes": dict(stats.likes),
                    "outcome": loop.online_outcome,
                    "reasons": loop.reasons,
                    "aliases": registry.aliases(),
                }
            )
            print(f"A/A round {r}: {dict(stats.impressions)} shown, {dict(stats.likes)} liked -> {loop.online_outcome}")
            for reason in loop.reasons:
                print(f"  - {reason}")
            if loop.online_outcome != "continue":
                break
        rows.append({"description": registry.client().get_model_version(registry.MODEL_NAME, copy).description})
    finally:
        service.terminate()
        service.wait(timeout=30)
    write_json(rows, cfg.paths.home / "aa_report.json")
    return rows
