"""Did a change lose anything? Two homes' champions on the protocol's test cases, paired over users, per type.

    PYTHONPATH=. .venv/bin/python bench/compare_models.py --before /path/to/home-a --after /path/to/home-b

Each home is an INSTRUCTREC_HOME a pipeline ran in (its MLflow store and snapshots). Both champions are
scored through their registered ONNX graphs on the cases `prepare` builds from the `after` champion's
snapshot (every instruction type, seen and held-out templates), and each type's per-user NDCG@10
difference gets the gate's paired bootstrap interval. A row whose interval lies wholly below zero is a
loss the change must answer for. Writes bench/results/compare_models.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
from request_classes import champion_data

from instructrec.config import Config, load_config
from instructrec.data import schema
from instructrec.data.snapshot import read_table
from instructrec.evaluation.evaluate import MappedScorer, evaluate
from instructrec.evaluation.gate import paired_bootstrap
from instructrec.serving.export import OnnxScorer, make_session
from instructrec.serving.recommend import BUNDLE_MANIFEST, read_catalogue
from instructrec.training.prepare import prepare
from model_registry.serving import ServingFiles

ROOT = Path(__file__).resolve().parents[1]


def home_config(profile, home: str) -> Config:
    return load_config(profile, environ={"INSTRUCTREC_HOME": home})


def onnx_scorer(files: ServingFiles, name: str, catalogue_ids: list[str]) -> MappedScorer:
    from transformers import BertTokenizerFast

    manifest = json.loads((files.bundle / BUNDLE_MANIFEST).read_text())
    tokenizer = BertTokenizerFast.from_pretrained(str(files.bundle / "tokenizer"), local_files_only=True)
    onnx = OnnxScorer(name, make_session(files.onnx_file), tokenizer, manifest["max_text_tokens"])
    return MappedScorer(onnx, read_catalogue(files.bundle).item_ids, catalogue_ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--before", required=True, help="INSTRUCTREC_HOME of the model before the change")
    ap.add_argument("--after", required=True, help="INSTRUCTREC_HOME of the model after it")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    cfg = home_config(args.profile, args.after)
    after, catalogue, interactions, _ = champion_data(cfg)
    items = read_table(after.snapshot, "items")
    known = items.filter(pl.col(schema.ITEM).is_in(pl.Series(catalogue.item_ids).implode()))
    prepared = prepare(cfg, interactions, known, catalogue.noun)
    ids = prepared.catalogue.item_ids
    before = champion_data(home_config(args.profile, args.before))[0]
    reports = {
        arm: evaluate(onnx_scorer(files, arm, ids), prepared.test_cases, prepared.split)
        for arm, files in (("before", before), ("after", after))
    }
    g = cfg.gate
    rows = {}
    for key in reports["after"].per_user:
        a, b = reports["after"].per_user[key], reports["before"].per_user[key]
        mean, lo, hi = paired_bootstrap(a - b, g.n_bootstrap, g.confidence, g.seed)
        rows[key] = {"before": float(b.mean()), "after": float(a.mean()), "delta": mean, "ci": [lo, hi]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_models.json").write_text(
        json.dumps(
            {"before": args.before, "after": args.after, "users": len(prepared.split.eval_users), **rows}, indent=2
        )
    )
    print(f"test NDCG@10 per type, {len(prepared.split.eval_users)} users; delta = after - before, paired 95% CI")
    print(f"{'type':<18} {'before':>8} {'after':>8} {'delta':>8}  interval")
    for key, r in rows.items():
        lost = "  below zero" if r["ci"][1] < 0 else ""
        print(
            f"{key:<18} {r['before']:8.4f} {r['after']:8.4f} {r['delta']:+8.4f}  "
            f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]{lost}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
