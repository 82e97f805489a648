"""Load on the HTTP service: 50 concurrent clients for 60 s, every feedback event accounted for.

    .venv/bin/python bench/service.py                      # after `make run` (serves its champion)
    .venv/bin/python bench/service.py --clients 50 --seconds 60 --feedback 0.3

Starts `instructrec serve` on a free port against $INSTRUCTREC_HOME, then each
client loops: POST /recommend (a random known user, k=10), and with
probability --feedback a POST /feedback on one shown item (own event_id). At
the end the feedback store is read back: events acknowledged == events stored.
The clients share the 2 cores with the service, so the numbers are a floor.
Writes bench/results/service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from instructrec.config import load_config
from instructrec.online.feedback import read_store
from model_registry import registry
from model_registry.serving import load_champion
from ops.demo import free_port, wait_for
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]


async def client(url: str, users: list[str], stop_at: float, feedback: float, run: str, seed: int, out: dict) -> None:
    rng = np.random.default_rng(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        while time.perf_counter() < stop_at:
            user = users[int(rng.integers(len(users)))]
            t0 = time.perf_counter()
            try:
                r = await http.post("/recommend", json={"user_id": user, "k": 10})
            except httpx.HTTPError:
                out["failed"] += 1
                continue
            out["recommend_ms"].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                out["failed"] += 1
                continue
            body = r.json()
            if body["items"] and rng.random() < feedback:
                event = {
                    "request_id": body["request_id"],
                    "user_id": user,
                    "kind": "like",
                    "item_id": body["items"][int(rng.integers(len(body["items"])))]["item_id"],
                    "event_id": f"{run}-{uuid.uuid4().hex[:12]}",
                }
                t0 = time.perf_counter()
                try:
                    f = await http.post("/feedback", json=event)
                except httpx.HTTPError:
                    out["failed"] += 1
                    continue
                out["feedback_ms"].append((time.perf_counter() - t0) * 1000)
                if f.status_code == 200 and f.json()["stored"]:
                    out["acknowledged"].append(event["event_id"])
                else:
                    out["failed"] += 1


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def load(url: str, users: list[str], clients: int, seconds: float, feedback: float, run: str) -> dict:
    out = {"recommend_ms": [], "feedback_ms": [], "acknowledged": [], "failed": 0}
    stop_at = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(client(url, users, stop_at, feedback, run, i, out) for i in range(clients)))
    out["elapsed_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--feedback", type=float, default=0.3)
    args = ap.parse_args()
    cfg = load_config()
    registry.connect(cfg.paths.tracking_uri)
    users = sorted(load_champion(cfg).histories)
    port, run = free_port(), f"bench-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    log = (cfg.paths.home / "bench-service.log").open("ab")
    service = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
        cwd=ROOT,
    )
    try:
        health = wait_for(url)
        out = asyncio.run(load(url, users, args.clients, args.seconds, args.feedback, run))
    finally:
        service.terminate()
        service.wait(timeout=30)
    store = read_store(cfg.paths.feedback)
    stored = set(store.filter(store["event_id"].str.starts_with(run))["event_id"].to_list())
    acked = set(out["acknowledged"])
    n = len(out["recommend_ms"]) + len(out["feedback_ms"])
    result = {
        "clients": args.clients,
        "seconds": round(out["elapsed_s"], 1),
        "models": health["models"],
        "requests": n,
        "requests_per_s": n / out["elapsed_s"],
        "recommend": {
            "n": len(out["recommend_ms"]),
            "per_s": len(out["recommend_ms"]) / out["elapsed_s"],
            "p50_ms": pct(out["recommend_ms"], 50),
            "p99_ms": pct(out["recommend_ms"], 99),
        },
        "feedback": {
            "n": len(out["feedback_ms"]),
            "p50_ms": pct(out["feedback_ms"], 50),
            "p99_ms": pct(out["feedback_ms"], 99),
        },
        "failed_requests": out["failed"],
        "feedback_acknowledged": len(acked),
        "feedback_stored": len(stored),
        "feedback_lost": len(acked - stored),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"{args.clients} clients x {result['seconds']} s against v{health['models']['champion']['version']} "
        f"({health['models']['champion']['variant']} on {health['models']['champion']['provider']})"
    )
    print(f"{'':12}{'n':>8}{'per s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'all':12}{n:>8}{result['requests_per_s']:>10.1f}")
    for name in ("recommend", "feedback"):
        r = result[name]
        print(
            f"{name:12}{r['n']:>8}{r.get('per_s', r['n'] / out['elapsed_s']):>10.1f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
        )
    print(
        f"failed requests {out['failed']}; feedback acknowledged {len(acked)}, stored {len(stored)}, "
        f"lost {len(acked - stored)}"
    )
    write_report(ROOT / "bench" / "results" / "service.json", "service", result)


if __name__ == "__main__":
    main()
