"""Fan-out through Prefect's RayTaskRunner: each model's evaluation a Ray task, the reports as in one process."""

from __future__ import annotations

import json

import pytest
import torch
from prefect import flow

from instructrec.config import RuntimeConfig
from instructrec.evaluation.evaluate import PopularityScorer, TorchScorer, evaluate
from instructrec.models.sasrec import SASRec, SASRecScorer
from instructrec.training.baseline import baseline_config
from tasks.evaluation import CHALLENGER, POPULARITY, SASREC, evaluation_reports, item_space
from tasks.runners import ray_task_runner
from tasks.training import Trained
from tests.model.conftest import build_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def test_evaluation_fans_out_as_ray_tasks_and_reports_what_one_process_reports(tiny_cfg, prepared, ray_local):
    model, tok = build_model(tiny_cfg, prepared, seed=5)
    torch.manual_seed(0)
    sasrec = SASRec(baseline_config(tiny_cfg, prepared.catalogue.n_items))
    ids = prepared.catalogue.item_ids
    space = item_space(prepared, Trained(model, tok, None, "fp"))  # type: ignore[arg-type]
    portable = {
        CHALLENGER: TorchScorer(CHALLENGER, model, tok, ids, ids),
        POPULARITY: PopularityScorer(prepared.split.popularity),
        SASREC: SASRecScorer(sasrec),
    }

    @flow(task_runner=ray_task_runner(RuntimeConfig(engine="ray")))
    def on_ray():
        return evaluation_reports(tiny_cfg, prepared, portable, {}, space)

    reports = on_ray()
    assert list(reports) == [CHALLENGER, POPULARITY, SASREC]
    args = (prepared.test_cases, prepared.split, tiny_cfg.data.cold_user_max_train, tiny_cfg.data.long_tail_share)
    for name, scorer in portable.items():
        alone = evaluate(scorer, *args, 256, space)
        assert reports[name].by_type == alone.by_type, name
        assert json.dumps(reports[name].slices, sort_keys=True) == json.dumps(alone.slices, sort_keys=True)  # NaN too
    assert reports[CHALLENGER].by_type != reports[POPULARITY].by_type  # three models, three reports
