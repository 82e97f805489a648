"""Requests as people write them: the champion, served as the service serves it, measured per request class.

    make bench-requests                                   # the champion of `make run` (INSTRUCTREC_HOME=.instructrec)
    .venv/bin/python bench/request_classes.py --users 200        # a quick look

For every test user (history before the test target, as the protocol), one
request per class (era, composite, negation, a named title; wordings never
trained on, written from the target's metadata: `instructrec.evaluation.request_eval`),
answered through `Recommender.recommend` on the exported ONNX graph, the same
call `/recommend` makes, beside the same user's list with no request; then the
same cases with the rules off (the learned scorer alone reads every word). Writes
bench/results/request_classes.json and its table (bench/results/request_classes.md);
`python -m ops.results add bench/results/request_classes.json` then `make docs` puts it in docs/requests.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from instructrec.config import Config, load_config
from instructrec.data import schema
from instructrec.data.snapshot import read_table
from instructrec.data.split import Catalogue, SplitData, temporal_leave_one_out
from instructrec.evaluation.request_eval import WORDINGS, interactions_before, markdown_table, served
from instructrec.serving.recommend import Recommender, read_catalogue
from model_registry import registry
from model_registry.serving import ServingFiles, champion_ref, fetch_version
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]


def champion_data(cfg: Config) -> tuple[ServingFiles, Catalogue, pl.DataFrame, SplitData]:
    """The registered champion's files, its catalogue (release years from the snapshot where the bundle has none),
    its interactions and their protocol split: what every bench on the champion starts from."""
    registry.connect(cfg.paths.tracking_uri)
    files = fetch_version(cfg, champion_ref())
    catalogue = read_catalogue(files.bundle)  # the model's item order
    if not any(catalogue.years):
        items = read_table(files.snapshot, "items").select(schema.ITEM, schema.YEAR)
        year = dict(zip(items[schema.ITEM].to_list(), items[schema.YEAR].to_list(), strict=True))
        catalogue.years[:] = [year.get(i) for i in catalogue.item_ids]
        print("note: this bundle carries no release years; read from the snapshot's items table", file=sys.stderr)
    interactions = files.interactions().filter(pl.col(schema.ITEM).is_in(pl.Series(catalogue.item_ids).implode()))
    return files, catalogue, interactions, temporal_leave_one_out(interactions, catalogue)


def markdown(report: dict) -> str:
    head = (
        f"`{report['command']}`, {report['date'][:10]}, model v{report['model_version']} "
        f"({report['dataset']}), {report['users']} test users, {report['seconds']:.0f} s:"
    )
    return head + "\n\n" + markdown_table(report)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--users", type=int, default=0, help="test users (0: all)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    cfg = load_config(args.profile)
    files, catalogue, interactions, split = champion_data(cfg)
    users = split.eval_users
    if args.users:
        users = np.sort(np.random.default_rng(args.seed).choice(users, min(args.users, len(users)), replace=False))
    rec = Recommender.load(files.onnx_file, files.bundle, interactions_before(split, users), files.version)
    rec.catalogue.years[:] = catalogue.years

    began = time.perf_counter()
    report = served(rec, split, users, args.seed)
    report.update(
        model_version=files.version,
        dataset=f"{len(split.users)} users, {catalogue.n_items} items",
        seconds=time.perf_counter() - began,
        wordings=WORDINGS,
    )
    out = Path(args.out)
    report = write_report(out / "request_classes.json", "request_classes", report)
    (out / "request_classes.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
