"""Serving capacity: the highest request rate at which /recommend's p99 stays under 50 ms, with requests scored
alone and micro-batched (instructrec.serving.batching), side by side in one run.

    .venv/bin/python bench/capacity.py                     # after `make run` (serves its champion)
    .venv/bin/python bench/capacity.py --seconds 20 --rates 10,20,40,60,80,100,130,160,200

Starts `instructrec serve` on the same champion as up to four services:
- `before`: the settings of the service before micro-batching: serve.batch_requests=1 (each request its own
  ONNX Runtime call, on the host's fastest graph) and serve.onnx_spinning=true (ONNX Runtime's default); the
  start-up heap is frozen out of garbage collection in every service (service.app.settle_heap);
- `alone`: the same with the threads not spinning (serve.onnx_spinning=false, now the default);
- `batched`: the serve.* defaults, up to serve.batch_requests per call after at most serve.batch_wait_ms, on
  the host's fastest row-independent graph;
- `alone-<graph>`: each request alone on the batched service's graph, when that differs from `alone`'s, so
  that what batching buys and what the graph costs are told apart.
This process is the load generator (open loop): Poisson arrivals at each offered rate in turn, each request
a random known user, k=10, a request in words for a share of them (--words), the same arrivals for every
service. A latency counts from the moment the request was due, not from when it was sent, so a generator
that falls behind does not hide queueing (coordinated omission); how late requests were sent is reported
too (send lag), so a rate the generator itself could not keep up is visible. For each rate the services are
loaded one after the other (order rotating), after --warmup seconds not counted. A rate is sustained when
p99 < --target-ms and nothing failed; a service's capacity is the highest rate it sustained below the first
one it did not, and a service is not offered more once its p99 passed 1 s or a request failed. Generator and
services share the host's cores, so the rates are a floor. The services run on a scratch home beside the
registry (their impressions do not reach the live feedback log) with serve.challenger_share=0 (the champion
alone). Writes bench/results/capacity.json and capacity.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from instructrec.config import PROFILES, Config, load_config  # noqa: E402
from model_registry import registry  # noqa: E402
from model_registry.serving import load_champion  # noqa: E402
from ops.demo import free_port, start_service, wait_for  # noqa: E402
from ops.provenance import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"serve.challenger_share": 0}  # the champion's capacity: no request goes to a challenger
ALONE, BATCHED = {"serve.batch_requests": 1}, {}
BEFORE = {**ALONE, "serve.onnx_spinning": True}
WORDINGS = [
    "something funny",
    "a scary film for tonight",
    "anything but drama",
    "a romantic comedy from the 90s",
    "like Fargo",
    "an old black and white film",
    "sci-fi adventure",
    "a thriller, no horror please",
]
OVERLOADED_MS = 1000.0


async def offered_load(
    url: str, users: list[str], rate: float, seconds: float, warmup: float, words: float, seed: int
) -> dict:
    """Poisson arrivals at `rate` for warmup + seconds; latencies of the requests due after the warm-up."""
    rng = np.random.default_rng(seed)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    lags: list[float] = []  # how late each counted request was sent: the generator's own delay
    failed = 0
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as http:

        async def one(body: dict, due: float, counted: bool) -> None:
            nonlocal failed
            if counted:
                lags.append((loop.time() - due) * 1000.0)
            try:
                ok = (await http.post("/recommend", json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            if counted:
                if ok:
                    latencies.append((loop.time() - due) * 1000.0)
                else:
                    failed += 1

        begin = loop.time()
        due, end, tasks = begin, begin + warmup + seconds, []
        while (due := due + rng.exponential(1.0 / rate)) < end:
            body: dict = {"user_id": users[int(rng.integers(len(users)))], "k": 10}
            if rng.random() < words:
                body["instruction"] = WORDINGS[int(rng.integers(len(WORDINGS)))]
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(body, due, due >= begin + warmup)))
        await asyncio.gather(*tasks)
    return {
        "offered_per_s": rate,
        "answered_per_s": len(latencies) / seconds,
        "n": len(latencies),  # answered among those due after the warm-up (every request is awaited)
        "failed": failed,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "send_lag_p99_ms": float(np.percentile(lags, 99)) if lags else float("nan"),
    }


def sustained(step: dict, target_ms: float) -> bool:
    """Every request answered, 99% within the target (a service that falls behind shows in its p99: each
    latency counts from when the request was due)."""
    return step["p99_ms"] < target_ms and step["failed"] == 0


def capacity(steps: list[dict], target_ms: float) -> float:
    """The highest offered rate sustained below the first rate that was not (0 when the first was not)."""
    best = 0.0
    for step in sorted(steps, key=lambda s: s["offered_per_s"]):
        if not sustained(step, target_ms):
            break
        best = step["offered_per_s"]
    return best


def batching_of(url: str) -> tuple[int, float]:
    """(shared calls, requests scored in them) so far, from /health."""
    m = httpx.get(f"{url}/health", timeout=10).json()["models"]["champion"]
    return m["batched_calls"], (m["mean_batch"] or 0.0) * m["batched_calls"]


def plot(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in result["configs"].items():
        steps = run["steps"]
        ax.plot(
            [s["offered_per_s"] for s in steps],
            [s["p99_ms"] for s in steps],
            marker="o",
            label=f"{name} ({run['variant']}): {run['capacity_per_s']:.0f} req/s",
        )
    ax.axhline(result["target_p99_ms"], color="grey", linestyle="--", label=f"p99 {result['target_p99_ms']:.0f} ms")
    ax.set(xlabel="offered /recommend requests per second", ylabel="p99 latency (ms, log)", yscale="log")
    ax.set_title("/recommend p99 against offered load")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def scratch_home(cfg: Config) -> Path:
    """A home beside the live one: the same snapshots and downloaded models, an empty feedback folder."""
    home = Path(tempfile.mkdtemp(prefix="instructrec-capacity-"))
    for part in (cfg.paths.snapshots, cfg.paths.serving):
        part.mkdir(parents=True, exist_ok=True)
        (home / part.name).symlink_to(part.resolve(), target_is_directory=True)
    return home


def run_steps(urls: dict[str, str], users: list[str], rates: list[float], args: argparse.Namespace) -> dict:
    steps: dict[str, list[dict]] = {name: [] for name in urls}
    for i, rate in enumerate(rates):
        names = list(urls)
        for name in names[i % len(names) :] + names[: i % len(names)]:  # each service first in turn
            done = steps[name]
            if done and (done[-1]["p99_ms"] > OVERLOADED_MS or done[-1]["failed"]):
                continue
            calls0, rows0 = batching_of(urls[name])
            step = asyncio.run(offered_load(urls[name], users, rate, args.seconds, args.warmup, args.words, seed=i))
            calls, rows = batching_of(urls[name])
            step["mean_batch"] = (rows - rows0) / (calls - calls0) if calls > calls0 else 1.0
            done.append(step)
            print(
                f"{name:12} offered {rate:5.0f}/s answered {step['answered_per_s']:6.1f}/s p50 {step['p50_ms']:7.1f} ms "
                f"p99 {step['p99_ms']:8.1f} ms send lag p99 {step['send_lag_p99_ms']:6.1f} ms failed {step['failed']:3d} "
                f"mean batch {step['mean_batch']:.2f}",
                flush=True,
            )
            time.sleep(2.0)  # let the queues drain
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", choices=PROFILES)
    ap.add_argument("--rates", default="10,20,30,40,50,60,80,100,130,160,200")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate and service")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each measurement")
    ap.add_argument("--words", type=float, default=0.3, help="share of requests with a request in words")
    ap.add_argument("--target-ms", type=float, default=50.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    args = ap.parse_args()
    cfg = load_config(args.profile)
    registry.connect(cfg.paths.tracking_uri)
    users = sorted(load_champion(cfg).histories)
    rates = [float(r) for r in args.rates.split(",")]
    home = scratch_home(cfg)
    os.environ.update({"INSTRUCTREC_HOME": str(home), "MLFLOW_TRACKING_URI": cfg.paths.tracking_uri})
    log_file = cfg.paths.home / "bench-capacity.log"
    settings: dict[str, dict] = {}
    urls: dict[str, str] = {}
    services: list = []

    def start(name: str, extra: dict) -> dict:
        port = free_port()
        settings[name], urls[name] = {**COMMON, **extra}, f"http://127.0.0.1:{port}"
        services.append(start_service(args.profile, port, log_file, settings[name]))
        return wait_for(urls[name])["models"]["champion"]

    try:
        health = {
            name: start(name, extra) for name, extra in (("before", BEFORE), ("alone", ALONE), ("batched", BATCHED))
        }
        graph = health["batched"]["variant"]
        if graph != health["alone"]["variant"]:
            health[f"alone-{graph}"] = start(f"alone-{graph}", {**ALONE, "serve.variant": graph})
        steps = run_steps(urls, users, rates, args)
    finally:
        for s in services:
            s.terminate()
        for s in services:
            s.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    serve = cfg.serve.model_dump(include={"batch_requests", "batch_wait_ms", "onnx_spinning"})
    configs = {
        name: {
            "settings": {**{f"serve.{k}": v for k, v in serve.items()}, **settings[name]},
            "variant": health[name]["variant"],
            "provider": health[name]["provider"],
            "steps": steps[name],
            "capacity_per_s": capacity(steps[name], args.target_ms),
        }
        for name in urls
    }
    result = {
        "target_p99_ms": args.target_ms,
        "seconds_per_step": args.seconds,
        "words_share": args.words,
        "users": len(users),
        "configs": configs,
        "ratios": {
            f"batched / {name}": configs["batched"]["capacity_per_s"] / run["capacity_per_s"]
            for name, run in configs.items()
            if name != "batched" and run["capacity_per_s"]
        },
    }
    for name, run in configs.items():
        print(
            f"{name:12} ({run['variant']}) sustains {run['capacity_per_s']:.0f} req/s at p99 < {args.target_ms:.0f} ms"
        )
    for name, ratio in result["ratios"].items():
        print(f"{name}: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.out.with_suffix(".png"))
    write_report(args.out, "capacity", result)


if __name__ == "__main__":
    main()
