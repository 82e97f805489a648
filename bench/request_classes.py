"""Requests as people write them: the champion, served as the service serves it, measured per request class.

    make bench-requests                                   # the champion of `make run` (INSTRUCTREC_HOME=.instructrec)
    .venv/bin/python bench/request_classes.py --users 200        # a quick look

For every test user (history before the test target, as the protocol), one
request per class (era, composite, negation, a named title; wordings never
trained on, written from the target's metadata: `instructrec.request_eval`),
answered through `Recommender.recommend` on the exported ONNX graph, the same
call `/recommend` makes, beside the same user's list with no request. Writes
bench/results/request_classes.json and the table of docs/request_classes.md
(bench/results/request_classes.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from instructrec import schema
from instructrec.config import load_config
from instructrec.recommend import Recommender, read_catalogue
from instructrec.request_eval import WORDINGS, evaluate_requests
from instructrec.snapshot import read_table
from instructrec.split import temporal_leave_one_out
from model_registry import registry
from model_registry.serving import champion_ref, fetch_version

ROOT = Path(__file__).resolve().parents[1]


def histories_before_test(split, users: np.ndarray) -> pl.DataFrame:
    """Each user's events up to the test target (train + validation), as interactions the recommender loads."""
    cat = split.catalogue
    rows = [(split.users[u], cat.item_ids[i - 1], t) for u in users for t, i in enumerate(split.history_before_test(u))]
    return pl.DataFrame(rows, schema=[schema.USER, schema.ITEM, "t"], orient="row").with_columns(
        pl.from_epoch("t").dt.replace_time_zone("UTC").alias(schema.TIMESTAMP), pl.lit(4.0).alias(schema.RATING)
    )


def markdown(report: dict) -> str:
    c = report["classes"]
    lines = [
        f"`{report['command']}`, {report['date'][:10]}, model v{report['model_version']} "
        f"({report['dataset']}), {report['users']} test users, {report['seconds']:.0f} s:",
        "",
        "| class | cases | NDCG@10 (request) | NDCG@10 (no request) | top 10 meeting the request | "
        "same, no request | catalogue base rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("era", "rare_era", "composite", "negation"):
        r = c[kind]
        if not r.get("cases"):
            lines.append(f"| {kind} | 0 | | | | | {r.get('note', '')} |")
            continue
        nd = (f"{r['ndcg@10']:.4f} | {r['ndcg@10_no_request']:.4f}") if "ndcg@10" in r else "n/a | n/a"
        lines.append(
            f"| {kind} | {r['cases']} | {nd} | {r['satisfied']:.1%} | {r['satisfied_no_request']:.1%} | "
            f"{r['base_rate']:.1%} |"
        )
    t = c["title"]
    if t.get("cases"):
        lines.append(
            f"| title | {t['cases']} | {t['ndcg@10']:.4f} | {t['ndcg@10_no_request']:.4f} | genre overlap with the film "
            f"{t['genre_overlap']:.1%} | {t['genre_overlap_no_request']:.1%} | |"
        )
    n = c["negation"]
    if n.get("cases"):
        per = ", ".join(f"'{w}' {v:.2f}x" for w, v in n["refused_ratio_per_wording"].items())
        lines += [
            "",
            f"Negation: the refused genre's share of the top 10 is {n['refused_share']:.1%} with the request, "
            f"{n['refused_share_no_request']:.1%} without ({n['refused_ratio']:.2f}x; per wording: {per}).",
        ]
    if t.get("cases"):
        lines.append(
            f"Titles: {t['resolved_in_requests']:.1%} of the requests resolved to the film named; "
            f"{t['spellings_resolved']:.1%} of {t['spellings']} spellings (article moved, lower case, no article, "
            "one typo)."
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--users", type=int, default=0, help="test users (0: all)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    cfg = load_config(args.profile)
    registry.connect(cfg.paths.tracking_uri)
    files = fetch_version(cfg, champion_ref())
    catalogue = read_catalogue(files.bundle)  # the model's item order; years from the snapshot where missing
    if not any(catalogue.years):
        items = read_table(files.snapshot, "items").select(schema.ITEM, schema.YEAR)
        year = dict(zip(items[schema.ITEM].to_list(), items[schema.YEAR].to_list(), strict=True))
        catalogue.years[:] = [year.get(i) for i in catalogue.item_ids]
        print("note: this bundle carries no release years; read from the snapshot's items table", file=sys.stderr)
    interactions = files.interactions().filter(pl.col(schema.ITEM).is_in(pl.Series(catalogue.item_ids).implode()))
    split = temporal_leave_one_out(interactions, catalogue)
    users = split.eval_users
    if args.users:
        users = np.sort(np.random.default_rng(args.seed).choice(users, min(args.users, len(users)), replace=False))
    rec = Recommender.load(files.onnx_file, files.bundle, histories_before_test(split, users), files.version)
    rec.catalogue.years[:] = catalogue.years

    def rank(user: str, text: str | None) -> tuple[list[int], dict]:
        out = rec.recommend(user, text, k=10)
        return [rec.catalogue.index[i["item_id"]] for i in out["items"]], out.get("understood", {})

    began = time.perf_counter()
    report = evaluate_requests(rank, split, users, args.seed, lambda text: rec.understand(text).like)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    report.update(
        command="bench/request_classes.py " + " ".join(sys.argv[1:]),
        date=datetime.now(UTC).isoformat(),
        commit=commit.stdout.strip(),
        model_version=files.version,
        dataset=f"{len(split.users)} users, {catalogue.n_items} items",
        seconds=time.perf_counter() - began,
        wordings=WORDINGS,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "request_classes.json").write_text(json.dumps(report, indent=2))
    (out / "request_classes.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
