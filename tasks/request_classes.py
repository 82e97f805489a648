"""Requests as people write them, measured on the exported challenger as the service answers them."""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import tracking
from instructrec.config import Config
from instructrec.evaluation.request_eval import interactions_before, markdown_table, served
from instructrec.models.model import item_tower
from instructrec.serving.recommend import Recommender, write_bundle
from instructrec.training.prepare import Prepared
from tasks.evaluation import Exported
from tasks.training import Trained


@task(name="evaluate-request-classes", cache_policy=NO_CACHE)
def evaluate_request_classes(
    cfg: Config, prepared: Prepared, challenger: Trained, exported: Exported, run_id: str
) -> dict | None:
    """Era, composite, negation and named-title requests (instructrec.evaluation.request_eval) on `eval.request_users` test
    users, through `Recommender.recommend` on the fp32 graph, and with the rules off (the learned scorer alone). Two
    headline metrics each way (the refused genre's share of the top 10 against the no-request list's; the share of
    top-10 items meeting era and composite requests); the per-class tables and numbers as artifacts under requests/."""
    split = prepared.split
    users = split.eval_users
    if cfg.eval.request_users <= 0 or not len(users):
        return None
    rng = np.random.default_rng(cfg.eval.seed)
    users = np.sort(rng.choice(users, min(cfg.eval.request_users, len(users)), replace=False))
    bundle = write_bundle(
        cfg.paths.exports / run_id / "request-eval-bundle",
        challenger.tokenizer,
        prepared.catalogue,
        cfg.data.max_history,
        cfg.model.max_text_tokens,
        "request-eval",
        item_vectors=item_tower(challenger.model),
    )
    rec = Recommender.load(exported.path, bundle, interactions_before(split, users), "challenger")

    report = served(rec, split, users, cfg.eval.seed)
    classes = report["classes"]
    met = [row["satisfied"] for kind, row in classes.items() if kind != "negation" and "satisfied" in row]
    headline = {"requests/negation_refused_ratio": classes["negation"].get("refused_ratio")}
    headline["requests/constraints_met"] = float(np.mean(met)) if met else None
    alone = report["learned_alone"]
    headline["requests/learned_negation_refused_ratio"] = alone["negation"].get("refused_ratio")
    met = [row["satisfied"] for kind, row in alone.items() if kind != "negation" and "satisfied" in row]
    headline["requests/learned_constraints_met"] = float(np.mean(met)) if met else None
    tracking.log_metrics(run_id, {k: v for k, v in headline.items() if v is not None})  # the rest: the artifact
    tracking.log_json(run_id, report, "requests/request_classes.json")
    table = markdown_table(report)
    tracking.log_text(run_id, table + "\n", "requests/request_classes.md")
    get_run_logger().info("request classes on %d test users:\n%s", len(users), table)
    return report
