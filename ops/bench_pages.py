"""Sections of the results pages rendered from benchmark records: one renderer per benchmark kind.

A benchmark under bench/ writes its JSON through `ops.provenance.write_report` (its kind, command, date, commit,
host); `python -m ops.results add bench/results/<file>.json` records it in docs/results/runs/, and `make docs`
puts the renderer's text between `<!-- results:NAME -->` and `<!-- /results -->`. The benchmarks print the same
tables through these functions, so the page and the terminal cannot disagree.
"""

from __future__ import annotations

import math

from ops.reference import table


def fmt(x: float, places: int = 4) -> str:
    return f"{x:.{places}f}"


def minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def provenance_line(rec: dict, what: str = "") -> str:
    """Which command made the numbers below, when, at which commit and where."""
    dirty = " with uncommitted changes" if rec.get("dirty") else ""
    where = f", host {rec['host']}" if rec.get("host") else ""
    return f"`{rec['command']}` at commit {rec['commit']}{dirty}, {rec['date'][:10]}{where}" + (
        f": {what}" if what else ":"
    )


def paragraphs(parts: list[str]) -> str:
    """Blocks of a section, one blank line between them."""
    return "\n".join(p if p.endswith("\n") else p + "\n" for p in parts)


# ---------------------------------------------------------------------------------------------------- speed


def scorer(rec: dict) -> str:
    """Eager PyTorch against each ONNX variant at every batch size, and the targets."""
    peaks = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rec["matmul_peak_flops"].items())
    head = provenance_line(
        rec,
        f"device {rec['device']}; {rec['mean_tokens']:.1f} tokens per instruction on average, "
        f"{rec['flops_per_instruction'] / 1e6:.0f} MFLOP each; measured matmul peak {peaks}.",
    )
    rows = [
        [
            r["variant"],
            str(r["batch"]),
            f"{r['per_s']:,.0f}",
            f"{r['x_eager']:.2f}x",
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}",
            f"{r['frac_peak']:.0%} ({r['peak']})",
            f"{r['max_abs_diff']:.1e}",
            fmt(r["top10_overlap"], 3),
        ]
        for r in sorted(rec["rows"], key=lambda r: (-r["batch"], r["variant"] != "eager"))
    ]
    header = ["variant", "batch", "instructions/s", "x eager", "p50 / p99 ms", "of the matmul peak"]
    header += ["largest score difference from eager", "top-10 overlap with eager"]
    targets = [t.replace("NOT met", "**NOT met**") for t in rec["targets"]]
    return paragraphs([head, table(header, rows), "Targets:\n\n" + "\n".join(f"- {t}" for t in targets)])


def training(rec: dict) -> str:
    """Examples/s per profile, then the full-softmax loss kernels side by side."""
    rows = [
        [
            r["profile"],
            r["device"],
            str(r["batch_size"]),
            "yes" if r["train_bert"] else "no",
            f"{r['examples_per_s']:,.0f}",
        ]
        for r in rec["profiles"]
    ]
    k0 = rec["loss_kernels"][0]
    kernels = [[k["loss"], f"{k['ms_per_step']:,.0f}", f"{k['speedup']:.2f}x"] for k in rec["loss_kernels"]]
    return paragraphs(
        [
            provenance_line(rec, f"{rec['steps']} training steps per profile on MovieLens-100k."),
            table(["profile", "device", "windows per batch", "BERT tuned", "examples/s"], rows),
            f"The full-softmax loss alone, forward + backward, {k0['rows']:,} rows x {k0['items']:,} items "
            "(ML-1M's catalogue; 128 users' 200-item windows), CPU:\n\n"
            + table(["loss", "ms per step", "x log_softmax"], kernels),
            *(["(bf16 products not measured: this CPU has no bf16 units.)"] if len(kernels) < 3 else []),
        ]
    )


def pipeline_overhead(rec: dict) -> str:
    """Where a pipeline run's wall time goes: each stage, and what is not computing."""
    wall = rec["wall_s"]
    rows = [[name, f"{s:.1f}", f"{s / wall:.1%}"] for name, s in rec["stages_s"].items()]
    logging = rec["mlflow_logging_s"]
    rows += [
        ["**compute** (stages minus MLflow writes)", f"{rec['compute_s']:.1f}", f"{rec['compute_s'] / wall:.1%}"],
        ["**MLflow logging**", f"{logging:.1f}", f"{logging / wall:.1%}"]
        if logging is not None
        else ["**MLflow logging**", "not recorded", ""],
        [
            "**orchestration** (the rest: Prefect)",
            f"{rec['orchestration_s']:.1f}",
            f"{rec['orchestration_s'] / wall:.1%}",
        ],
    ]
    basis = "the process, Prefect's start and stop included" if rec["process_wall_s"] else "the MLflow run"
    return paragraphs(
        [
            provenance_line(rec, f"run {rec['run_id'][:8]} (profile {rec['profile']}), {wall:.1f} s wall ({basis})."),
            table(["stage", "seconds", "share of the wall time"], rows),
        ]
    )


# ---------------------------------------------------------------------------------------------------- serving


def service(rec: dict) -> str:
    """Throughput and latency under concurrent clients, and whether feedback was lost."""
    champion = rec["models"]["champion"]
    rows = [
        ["all", f"{rec['requests']:,}", f"{rec['requests_per_s']:.0f}", "", ""],
        *(
            [
                f"`/{name}`",
                f"{rec[name]['n']:,}",
                f"{rec[name].get('per_s', rec[name]['n'] / rec['seconds']):.0f}",
                f"{rec[name]['p50_ms']:.0f}",
                f"{rec[name]['p99_ms']:.0f}",
            ]
            for name in ("recommend", "feedback")
        ),
    ]
    return paragraphs(
        [
            provenance_line(
                rec,
                f"{rec['clients']} concurrent clients for {rec['seconds']:g} s against v{champion['version']} "
                f"({champion['variant']} graph on {champion['provider']}); the clients share the machine's "
                f"{rec['cpu_count']} cores with the service.",
            ),
            table(["requests", "n", "per s", "p50 ms", "p99 ms"], rows),
            f"Failed requests: {rec['failed_requests']}. Feedback events acknowledged: "
            f"{rec['feedback_acknowledged']:,}; stored: {rec['feedback_stored']:,}; **lost: {rec['feedback_lost']}**.",
        ]
    )


def _arm(a: dict) -> str:
    return f"{a['likes']:,} / {a['impressions']:,} = {fmt(a['like_rate'])}"


def session_ab(rec: dict) -> str:
    """Session adaptation against static sessions, users as the unit, and the next list's latency."""

    def row(label: str, t: dict) -> list[str]:
        lo, hi = t["lift_ci95"]
        p = "< 0.0001" if t["p_two_sided"] < 1e-4 else f"{t['p_two_sided']:.4f}"
        return [
            label,
            _arm(t["static"]),
            _arm(t["adapted"]),
            f"{t['relative_lift']:+.1%} [{lo:+.1%}, {hi:+.1%}]",
            f"{t['z']:+.2f}",
            p,
            f"{t['design_effect']:.2f}",
            f"{t['detectable_relative_lift']:.1%}",
        ]

    header = ["lists", "static: liked / shown", "adapted: liked / shown", "relative lift [95% CI]", "z", "p"]
    rows = [
        row("first (cannot differ: a check of the split)", rec["first_list"]),
        row(f"2nd to {rec['pages']}th (after reactions)", rec["later_lists"]),
    ]
    pages = " / ".join(
        f"{s:.4f} vs {a:.4f}" for s, a in zip(rec["by_page"]["static"], rec["by_page"]["adapted"], strict=True)
    )
    lat = rec["next_list_latency_ms"]
    return paragraphs(
        [
            provenance_line(
                rec,
                f"{rec['users']:,} simulated users x {rec['pages']} lists, model v{rec['model_version']} "
                f"({rec['profile']} profile), {rec['concurrency']} concurrent clients, {rec['workers']} service "
                f"process(es), {minutes(rec['elapsed_s'])} of play, {rec['failures']} failed requests.",
            ),
            table([*header, "design effect", "smallest lift detectable (80% power)"], rows),
            f"Like rate by list, static vs adapted: {pages}.",
            f"Next list right after a reaction: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms over "
            f"{lat['n']:,} requests; target p99 < 50 ms: {verdict(lat['p99'] < 50)}.",
        ]
    )


def new_items(rec: dict) -> str:
    """Items never trained on, placed by their text: the users whose test item is one of them, and the rest."""
    names = {"P1/I0": "P1/I0 (history only)", "P1/I2": "P1/I2 (history + the genres asked for)"}
    names["P0/I2"] = "P0/I2 (genres asked for, no history)"
    rows = [
        [
            names.get(t, t),
            str(r["new_item_users"]),
            *(fmt(r.get(f"new/{m}/ndcg@10", math.nan)) for m in ("scorer", "popularity_trained_counts")),
            fmt(r.get("new/popularity_full_counts/ndcg@10", math.nan)),
            f"{fmt(r['other/scorer_without_new_items/ndcg@10'])} -> {fmt(r['other/scorer/ndcg@10'])}",
        ]
        for t, r in rec["by_type"].items()
    ]
    header = ["test NDCG@10", "users (new item)", "scorer + text vectors", "popularity, trained counts"]
    return paragraphs(
        [
            provenance_line(
                rec,
                f"{rec['data']}, {rec['held_out_items']} of {rec['items']:,} items held out of training (seed "
                f"{rec['seed']}); trained in {rec['train_seconds']:.0f} s.",
            ),
            table([*header, "popularity, full counts", "other users: scorer -> scorer + new items"], rows),
        ]
    )


# ---------------------------------------------------------------------------------------------------- decisions


def ab_validity(rec: dict) -> str:
    """The simulated experiments decided by the project's own gate: false promotions, power, early stops."""
    mde = rec["policy"]["mde"]
    names = {0.0: "A/A", -0.05: "-5%", mde: f"+{mde:.0%} (power)", -mde: f"-{mde:.0%} (harm)"}
    rows = [
        [
            f"{c['rho']:g}",
            names.get(c["lift"], str(c["lift"])),
            f"{c['experiments']:,}",
            f"{c['promoted']:.2%} [{c['promoted_ci'][0]:.2%}, {c['promoted_ci'][1]:.2%}]",
            f"{c['stopped_early_lower']:.1%}",
            f"{c['mean_users']:,.0f} / {c['fixed_horizon_users']:,.0f}",
            f"{c['mean_looks']:.1f}",
            f"{c['mean_hours']:.1f}",
        ]
        for c in rec["cells"]
    ]
    header = ["rho", "challenger", "experiments", "promoted [95% MC interval]", "stopped early (lower boundary)"]
    targets = "; ".join(f"{k}: {verdict(v)}" for k, v in rec["targets"].items())
    return paragraphs(
        [
            provenance_line(rec, f"{minutes(rec['seconds'])}."),
            table([*header, "users at decision / fixed-horizon users", "looks", "hours"], rows),
            f"Targets: {targets}.",
        ]
    )


def cuped(rec: dict) -> str:
    """What CUPED's pre-period adjustment saves, measured over simulated tests, and whether its z stays honest."""
    rows = [
        [
            f"{c['rho']:g}",
            f"{c['returning']:.0%}",
            f"{c['pre_lists']:g}",
            fmt(c["variance_ratio_measured"], 3),
            fmt(c["variance_ratio_reported"], 3),
            f"{c['users_saved']:.0%}",
            fmt(c["adjusted_z_sd"], 2),
        ]
        for c in rec["cells"]
    ]
    header = ["rho", "returning users", "lists before the test (mean)", "variance with CUPED / without (measured)"]
    return paragraphs(
        [
            provenance_line(rec, f"{rec['reps']} simulated tests per cell, {rec['users_per_arm']:,} users per arm."),
            table([*header, "(reported by each test, mean)", "users saved", "sd of the adjusted z (1 = honest)"], rows),
        ]
    )


# ---------------------------------------------------------------------------------------------------- scale


def ray_batch(rec: dict) -> str:
    """Batch top-k in one process against the Ray Data actor pool, on the same users."""
    d, local, ray = rec["data"], rec["local"], rec["ray"]
    shape = f"{d['items']:,} items, {d['interactions']:,} interactions"
    rows = [
        ["one process (one ONNX session)", f"{local['seconds']:.1f}", f"{local['users_per_s']:,}"],
        [
            f"Ray Data: {ray['actors']} actors x {ray['actor_threads']} thread(s), cluster of {ray['cluster_cpus']:g} CPUs",
            f"{ray['seconds']:.1f}",
            f"{ray['users_per_s']:,} ({rec['ray_over_local']:.2f}x)",
        ],
    ]
    same = "identical for every user" if rec["top_k_identical"] else "**not identical**"
    return paragraphs(
        [
            provenance_line(
                rec,
                f"top-{rec['k']} for each of {rec['users_ranked']:,} synthetic users ({shape}), the "
                f"{rec['profile']} profile's scorer shape; preparing the users took {rec['prepare_s']:.0f} s.",
            ),
            table(["engine", "seconds", "users/s"], rows),
            f"Top-{rec['k']} lists {same}; largest score difference {rec['max_score_diff']:.1e}.",
        ]
    )


def scale(rec: dict) -> str:
    """Every stage's time and peak memory at each scale, and its growth exponent between neighbouring scales."""
    results = rec["results"]
    shapes = "; ".join(
        f"{r['scale']}x: {r['users']:,} users, {r['items']:,} items, {r['interactions']:,} interactions, "
        f"{r['eval_cases']:,} test instructions"
        for r in results
    )
    header = ["stage", *(f"{r['scale']}x: s / peak GB" for r in results), "exponent in interactions", "in its work"]
    rows = []
    for name in results[0]["stages"]:
        growth = rec["growth"].get(name, {})
        rows.append(
            [
                name,
                *(f"{r['stages'][name]['seconds']:g} / {r['stages'][name]['peak_rss_gb']:.2f}" for r in results),
                ", ".join(f"{g['exponent']:+.2f}" for g in growth.values()),
                ", ".join(f"{g['work_exponent']:+.2f}" for g in growth.values()),
            ]
        )
    worst = max(((g["exponent"], n) for n, pairs in rec["growth"].items() for g in pairs.values()), default=None)
    lines = [
        f"Peak memory {rec['peak_rss_gb']:.2f} GB; target under 8 GB at the largest scale: "
        f"{verdict(rec['peak_rss_gb'] < 8)}."
    ]
    if worst:
        lines.append(f"Largest growth exponent in interactions: {worst[0]:+.2f} ({worst[1]}).")
    return paragraphs([provenance_line(rec, f"{rec['note']}. {shapes}."), table(header, rows), " ".join(lines)])


def capacity(rec: dict) -> str:
    """Each offered rate's p50 / p99 per service (scored alone, batched); the highest rate each sustains."""
    target, names = rec["target_p99_ms"], list(rec["configs"])
    by_rate: dict[float, dict[str, dict]] = {}
    for name in names:
        for step in rec["configs"][name]["steps"]:
            by_rate.setdefault(step["offered_per_s"], {})[name] = step

    def cell(step: dict | None) -> str:
        if step is None:
            return "not offered"
        mark = "" if step["p99_ms"] < target and not step["failed"] else " ✗"
        failed = f", {step['failed']} failed" if step["failed"] else ""
        batch = f", batch {step['mean_batch']:.1f}" if step["mean_batch"] > 1 else ""
        return f"{step['p50_ms']:.0f} / {step['p99_ms']:.0f}{mark}{batch}{failed}"

    rows = [[f"{rate:g}", *(cell(steps.get(n)) for n in names)] for rate, steps in sorted(by_rate.items())]
    summary = [
        [
            n,
            f"`{run['variant']}` on {run['provider']}",
            ", ".join(f"{k}={v}" for k, v in run["settings"].items() if k != "serve.challenger_share"),
            f"**{run['capacity_per_s']:g}**",
        ]
        for n, run in rec["configs"].items()
    ]
    kept = [s for run in rec["configs"].values() for s in run["steps"] if s["offered_per_s"] <= run["capacity_per_s"]]
    lag = max((s["send_lag_p99_ms"] for s in kept), default=float("nan"))
    ratios = "; ".join(f"{name}: **{x:.2f}x**" for name, x in rec["ratios"].items())
    return paragraphs(
        [
            provenance_line(
                rec,
                f"open-loop Poisson load on the champion, {rec['seconds_per_step']:g} s per rate and service, "
                f"{rec['words_share']:.0%} of requests in words, {rec['users']:,} known users; p50 / p99 in ms "
                f"from when each request was due (✗: p99 at or over {target:g} ms, or a failure), and the mean "
                "requests per scoring call where calls were shared.",
            ),
            table(["offered req/s", *names], rows),
            table(["service", "graph", "settings", f"req/s sustained at p99 < {target:g} ms"], summary),
            f"Sustained rates, batched over each other service: {ratios or 'none sustained'}. At the rates "
            f"counted as sustained the generator kept its schedule: requests went out at most {lag:.1f} ms late "
            "(p99 of the worst such step).",
        ]
    )


RENDERERS = {
    "scorer": scorer,
    "training": training,
    "pipeline_overhead": pipeline_overhead,
    "service": service,
    "capacity": capacity,
    "session_ab": session_ab,
    "new_items": new_items,
    "ab_validity": ab_validity,
    "cuped": cuped,
    "ray_batch": ray_batch,
    "scale": scale,
}
