"""Results pages generated from recorded runs: `make docs` (here: `python -m ops.results`) rewrites every generated
section of the pages under docs/results/ from the run records in docs/results/runs/; `--check` exits 1 naming
each page whose sections differ from what the records say (tests/unit/test_results_docs.py runs it).

A run record is exported from a pipeline run in MLflow (`make results-export NAME=movielens-100k`, after
`make run`): the command, date, commit and host, the data's size, the wall time and each stage's seconds, the
protocol's test metrics of every model on every instruction type, the paired interval against SASRec, the
lists' diversity and the MMR trade-off, the explanations' faithfulness and the request classes. Everything a
page says in numbers comes from a record, so a page cannot quote one run's table beside another run's date.

A page holds hand-written prose and generated sections between `<!-- results:NAME -->` and `<!-- /results -->`
(NAME: a record in docs/results/runs/).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from instructrec.evaluation.request_eval import markdown_table
from ops import bench_pages
from ops.bench_pages import fmt as _f
from ops.bench_pages import minutes, paragraphs, provenance_line, verdict
from ops.reference import table

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "results" / "runs"
PAGES = tuple(
    ROOT / "docs" / page
    for page in ("results/quality.md", "results/benchmarks.md", "results/feedback-loop.md", "requests.md")
) + (ROOT / "docs" / "gate.md", ROOT / "docs" / "scaling.md")
SECTION = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
TYPES = ("P1/I0", "P1/I1", "P1/I2", "P2/I0", "P2/I1", "P2/I2", "P0/I1", "P0/I2")
HEADLINE = "P1/I0"  # the task published sequential recommenders solve: a history, no words
MODELS = {"challenger": "scorer", "sasrec": "SASRec", "popularity": "popularity"}
LIST_METRICS = ("ndcg@10", "ild_genre@10", "ild_vector@10", "coverage@10", "novelty@10")


# ---------------------------------------------------------------------------------------------------- export


def _rows(frame: dict) -> list[dict]:
    """MLflow's logged table ({"columns": [...], "data": [[...]]}) as records."""
    return [dict(zip(frame["columns"], row, strict=True)) for row in frame["data"]]


def record_from_run(client, run_id: str, name: str, command: str) -> dict:
    """What the pages say about one pipeline run, from its MLflow run (tags, metrics, logged tables)."""
    run = client.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics

    def artifact(path: str) -> dict:
        import mlflow

        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")

    table_rows = _rows(artifact("evaluation/metrics_table.json"))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for r in table_rows:
        key = r["type"] if r["templates"] == "seen" else f"{r['type']}/held-out"
        keep = ("ndcg@10", "hr@10", *LIST_METRICS) if key == HEADLINE else ("ndcg@10", "hr@10")
        scores.setdefault(r["model"], {})[key] = {m: round(float(r[m]), 6) for m in keep}
    requests = artifact("requests/request_classes.json")
    return {
        "kind": "pipeline",
        "name": name,
        "command": command,
        "date": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(timespec="seconds"),
        "commit": tags.get("mlflow.source.git.commit", "unknown")[:7],
        "dirty": tags.get("code.dirty") == "true",
        "host": tags.get("instructrec.host", "unknown"),
        "profile": tags.get("profile"),
        "data": {k: int(tags[f"data.{k}"]) for k in ("users", "items", "interactions")},
        "wall_s": round((run.info.end_time - run.info.start_time) / 1000, 1),
        "stage_s": {
            k.removeprefix("time_s/"): round(v, 1) for k, v in sorted(metrics.items()) if k.startswith("time_s/")
        },
        "gate": tags.get("gate_outcome"),
        "scores": scores,
        "vs_sasrec": artifact("evaluation/vs_sasrec.json"),
        "diversity_tradeoff": _rows(artifact("evaluation/diversity_tradeoff.json")),
        "explanations": artifact("evaluation/explanation_faithfulness.json"),
        "requests": {k: v for k, v in requests.items() if k != "examples"},  # the table's numbers, not the texts
    }


def export(tracking_uri: str, name: str, command: str, run_id: str | None = None) -> Path:
    """Write docs/results/runs/<name>.json from a run: the given one, else the champion's."""
    from model_registry import registry

    registry.connect(tracking_uri)
    if run_id is None:
        champion = registry.get_alias(registry.CHAMPION)
        if champion is None:
            raise SystemExit(f"no champion in {tracking_uri}: run the pipeline first (make run), or pass --run-id")
        run_id = champion.run_id
    out = RUNS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record_from_run(registry.client(), run_id, name, command), indent=1) + "\n")
    return out


def add(bench_output: Path, name: str | None = None) -> Path:
    """Record a benchmark's JSON output (bench/results/<kind>.json, which carries its command, date and commit) as
    docs/results/runs/<name>.json, and its figure (the same name, .png) beside it; only kinds a page can render
    are taken."""
    rec = json.loads(bench_output.read_text())
    kind = rec.setdefault("kind", bench_output.stem)
    if kind not in RENDERERS or kind == "pipeline":
        raise SystemExit(f"{bench_output}: no results section renders {kind!r} (known: {sorted(RENDERERS)})")
    rec.pop("examples", None)  # sample texts, not numbers a page shows
    out = RUNS / f"{name or kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    if (figure := bench_output.with_suffix(".png")).exists():  # the benchmark's figure travels with its numbers
        shutil.copyfile(figure, out.with_suffix(".png"))
    return out


# ---------------------------------------------------------------------------------------------------- render


def _provenance(rec: dict) -> str:
    d = rec["data"]
    return provenance_line(
        rec,
        f"profile {rec['profile']}, {d['users']:,} users, {d['items']:,} items, {d['interactions']:,} interactions; "
        f"{minutes(rec['wall_s'])} for the flow run; gate: {rec['gate']}.",
    )


def headline_table(rec: dict) -> str:
    rows = [
        [
            label + (" (the run's candidate)" if model == "challenger" else ""),
            *(_f(rec["scores"][model][HEADLINE][m]) for m in ("ndcg@10", "hr@10")),
        ]
        for model, label in MODELS.items()
        if model in rec["scores"]
    ]
    return table([f"{HEADLINE} (history only)", "test NDCG@10", "HR@10"], rows)


def types_table(rec: dict) -> str:
    ours = rec["scores"]["challenger"]

    def row(label: str, values: list[float]) -> list[str]:
        return [label, *(_f(v) for v in values), _f(sum(values) / len(values))]

    seen = [ours[t]["ndcg@10"] for t in TYPES]
    rows = [row("scorer, seen templates", seen)]
    if all(f"{t}/held-out" in ours for t in TYPES):
        held = [ours[f"{t}/held-out"]["ndcg@10"] for t in TYPES]
        rows.append(row("scorer, held-out templates", held))
        rows[-1][-1] += f" ({sum(held) / sum(seen):.0%})"
    for model in ("sasrec", "popularity"):
        if model in rec["scores"]:
            rows.append(row(MODELS[model], [rec["scores"][model][t]["ndcg@10"] for t in TYPES]))
    return table(["test NDCG@10", *TYPES, "mean"], rows)


def below_popularity_line(rec: dict) -> str:
    """The rows where the scorer loses to popularity, which the gate reports as [warn]."""
    ours, pop = rec["scores"]["challenger"], rec["scores"]["popularity"]
    low = [f"{k} {_f(v['ndcg@10'])}" for k, v in ours.items() if v["ndcg@10"] < pop[k]["ndcg@10"]]
    return "Rows below popularity: " + (
        ", ".join(low) + f" (popularity {_f(pop[HEADLINE]['ndcg@10'])})." if low else "none."
    )


def versus_sasrec(rec: dict) -> str:
    vs = rec["vs_sasrec"]
    head = vs["by_type"][HEADLINE]
    return (
        f"{HEADLINE} minus SASRec, paired bootstrap over the {head['users']:,} test users: "
        f"**{head['delta_ndcg@10']:+.4f}**, {vs['confidence']:.0%} CI [{head['ci_low']:+.4f}, {head['ci_high']:+.4f}]."
    )


def lists_table(rec: dict) -> str:
    names = ("NDCG@10", "diversity, genres", "diversity, item vectors", "coverage@10", "novelty (bits)")
    rows = [
        [MODELS[m], *(_f(rec["scores"][m][HEADLINE][k], 4 if k == "ndcg@10" else 3) for k in LIST_METRICS)]
        for m in MODELS
        if m in rec["scores"]
    ]
    return table([f"{HEADLINE} top-10 lists", *names], rows)


def tradeoff_line(rec: dict) -> str:
    pts = rec["diversity_tradeoff"]
    return (
        f"MMR re-ranking ({HEADLINE}), weight "
        + " / ".join(f"{p['diversity']:g}" for p in pts)
        + ": NDCG@10 "
        + " / ".join(_f(p["ndcg@10"]) for p in pts)
        + " at item-vector diversity "
        + " / ".join(_f(p["ild_vector@10"], 3) for p in pts)
        + "."
    )


def explanations_line(rec: dict) -> str:
    e = rec["explanations"]
    return (
        f"Explanations: removing the history item an explanation cites lowers the listed item's score in "
        f"{e['cited_lowered_share']:.1%} of {e['cited_n']:,} cases (mean drop {e['cited_mean_drop']:.3f}), against "
        f"{e['random_lowered_share']:.1%} (mean drop {e['random_mean_drop']:.3f}) for a random history item."
    )


def stages_line(rec: dict) -> str:
    return "Stage seconds (`time_s/*`): " + ", ".join(f"{k} {v:g}" for k, v in rec["stage_s"].items()) + "."


def section(rec: dict) -> str:
    """One run's generated section of a results page."""
    parts = [
        _provenance(rec),
        headline_table(rec),
        versus_sasrec(rec),
        "Every instruction type (SASRec and popularity cannot read words: their rows repeat the history or the "
        "no-history value):\n\n" + types_table(rec),
        below_popularity_line(rec),
        lists_table(rec),
        tradeoff_line(rec),
        explanations_line(rec),
        f"Requests as people write them ({rec['requests']['users']:,} test users, the run's own measurement; "
        "[requests.md](../requests.md)):\n\n" + markdown_table(rec["requests"]),
        stages_line(rec),
    ]
    return paragraphs(parts)


# What each class was asked to reach (docs/requests.md, "Measured per class"): (what, value, target, met)
def request_targets(rep: dict) -> list[tuple[str, str, str, bool]]:
    c = rep["classes"]
    out = []
    if (n := c["negation"]).get("cases"):
        worst = max(n["refused_ratio_per_wording"].values())
        value = f"{n['refused_ratio']:.2f}x on average, {worst:.2f}x at the worst wording"
        ok = n["refused_ratio"] <= 0.1 and worst <= 0.2
        out.append(
            (
                "negation: the refused genre's top-10 share against its no-request share",
                value,
                "at most 0.1x on average, no wording above 0.2x",
                ok,
            )
        )
    for what, r, floor in (
        ("rare era: top 10 in the asked period", c["rare_era"], 0.8),
        ("composite: top 10 meeting every constraint", c["composite"], 0.7),
    ):
        if r.get("cases"):
            value = f"{r['satisfied']:.1%} (base rate {r['base_rate']:.1%})"
            out.append((what, value, f"at least {floor:.0%}", r["satisfied"] >= floor))
    if (t := c["title"]).get("cases"):
        ratio = t["genre_overlap"] / t["genre_overlap_no_request"] if t["genre_overlap_no_request"] else float("inf")
        resolved = f"{t['spellings_resolved']:.1%} of {t['spellings']:,}"
        overlap = f"{t['genre_overlap']:.3f} vs {t['genre_overlap_no_request']:.3f} ({ratio:.1f}x)"
        out.append(
            ("titles: spellings resolved to the film named", resolved, "at least 95%", t["spellings_resolved"] >= 0.95)
        )
        out.append(
            ("titles: the list's genre overlap with the film, against no request", overlap, "at least 2x", ratio >= 2)
        )
    return out


def requests_section(rep: dict) -> str:
    """The bench's per-class table and each target, met or not, from a `bench/request_classes.py` record."""
    head = provenance_line(
        rep,
        f"champion v{rep['model_version']} ({rep['dataset']}), {rep['users']:,} test users, {rep['seconds']:.0f} s.",
    )
    rows = [[what, value, target, verdict(ok)] for what, value, target, ok in request_targets(rep)]
    return head + "\n\n" + markdown_table(rep) + "\n\n" + table(["target", "measured", "asked", ""], rows)


# a record's kind -> its section
RENDERERS = {"pipeline": section, "request_classes": requests_section, **bench_pages.RENDERERS}


def render_record(rec: dict) -> str:
    return RENDERERS[rec.get("kind", "pipeline")](rec)


def render_page(text: str, records: dict[str, dict]) -> str:
    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in records:
            raise SystemExit(f"a page asks for the record {name!r}, and docs/results/runs/{name}.json is missing")
        body = render_record(records[name])
        return m.group(1) + "\n" + body + ("" if body.endswith("\n") else "\n") + "\n" + m.group(4)

    return SECTION.sub(fill, text)


def load_records(folder: Path = RUNS) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def stale_pages() -> list[Path]:
    records = load_records()
    return [p for p in PAGES if render_page(p.read_text(), records) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    ex = sub.add_parser("export", help="record a pipeline run (default: the champion's) as docs/results/runs/NAME.json")
    ex.add_argument("--name", required=True, help="the record's name, e.g. movielens-100k")
    ex.add_argument("--command", default="make run", help="the command that made the run, as the page shows it")
    ex.add_argument("--run-id", default=None)
    ex.add_argument("--profile", default="cpu", help="whose paths.tracking_uri to read (INSTRUCTREC_HOME applies)")
    ad = sub.add_parser("add", help="record a benchmark's output, e.g. bench/results/request_classes.json")
    ad.add_argument("path", type=Path)
    ad.add_argument("--name", default=None, help="the record's name (default: the benchmark's)")
    ap.add_argument("--check", action="store_true", help="exit 1 naming each page that is stale; write nothing")
    args = ap.parse_args(argv)
    if args.cmd == "export":
        from instructrec.config import load_config

        print("wrote", export(load_config(args.profile).paths.tracking_uri, args.name, args.command, args.run_id))
    if args.cmd == "add":
        print("wrote", add(args.path, args.name))
    if args.check:
        stale = stale_pages()
        for p in stale:
            print(f"{p.relative_to(ROOT)} is stale: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    records = load_records()
    for page in PAGES:
        page.write_text(render_page(page.read_text(), records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
