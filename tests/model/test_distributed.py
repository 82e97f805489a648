"""Data-parallel training: 2 gloo ranks launched by Ray Train train as 1 process on the doubled batch, across a
crash and a resume too."""

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from instructrec.engine.distributed import SASRecJob, TrainJob, fit_on_ray
from instructrec.models.sasrec import SASRec
from instructrec.training.baseline import baseline_config, baseline_settings, fit_sasrec, training_windows
from instructrec.training.train import FitRun, fit, new_scorer, representation_settings

pytestmark = pytest.mark.slow  # Ray Train starts a controller and a worker group per run (15-20 s here)

PER_RANK, STEPS_PER_EPOCH, EPOCHS = 2, 10, 2  # 20 steps of 4 windows (each holds up to 5 examples)


def _comparable(name: str, delta: torch.Tensor) -> torch.Tensor:
    """The parameter difference, less the key third of attention's qkv bias: adding a constant to every
    key's logit leaves the softmax unchanged, so its exact gradient is zero and Adam turns the float noise
    of either run (1e-9) into steps of up to lr; no data-parallel scheme can agree there (seen: 1e-4)."""
    if name.endswith("qkv.bias"):
        q, _, v = delta.reshape(3, -1)
        return torch.cat([q, v])
    return delta.float()


def _no_validation(model):
    return {"ndcg@10": 0.0}


def test_sasrec_on_two_gloo_ranks_trains_as_one_process_on_the_doubled_batch(tiny_cfg, prepared, ray_local, tmp_path):
    cfg = tiny_cfg.model_copy(update={"baseline": tiny_cfg.baseline.model_copy(update={"dropout": 0.0})})
    train = prepared.split.train
    n_items = prepared.catalogue.n_items
    windows = len(training_windows(train, cfg.data.max_history))
    settings = replace(baseline_settings(cfg), epochs=4, eval_every=1, patience=10, batch_size=2 * PER_RANK)
    steps = settings.epochs * -(-windows // settings.batch_size)
    assert steps >= 20, steps  # at least 20 steps

    torch.manual_seed(cfg.train.seed)
    single = SASRec(baseline_config(cfg, n_items))
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    alone = fit_sasrec(single, train, settings, _last_epoch_best)
    weights, ranked = fit_on_ray(
        SASRecJob(cfg, train, n_items, replace(settings, batch_size=PER_RANK), _last_epoch_best, initial),
        workers=2,
        storage=tmp_path / "ray-train",
    )
    assert np.allclose([r["loss"] for r in ranked.history], [r["loss"] for r in alone.history], rtol=0, atol=1e-5)
    reference = single.state_dict()
    assert max(float((reference[k] - initial[k]).abs().max()) for k in reference) > 1e-3
    diffs = {k: float(_comparable(k, weights[k] - reference[k]).abs().max()) for k in reference}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]


def _last_epoch_best(model) -> float:
    """A validation score that grows every epoch, so both runs keep their last weights."""
    _last_epoch_best.calls = getattr(_last_epoch_best, "calls", 0) + 1
    return float(_last_epoch_best.calls)


class _EpochLog:
    """An epoch callback that records which process called it, and fails after `fail_at` (a crash after rank 0
    wrote that epoch's checkpoint)."""

    def __init__(self, path, fail_at: int | None = None):
        self.path, self.fail_at = path, fail_at

    def __call__(self, row: dict) -> None:
        import json
        import os

        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": row["epoch"], "pid": os.getpid()}) + "\n")
        if row["epoch"] == self.fail_at:
            raise RuntimeError("the rank's host went away")


def test_two_gloo_ranks_crashed_and_resumed_end_where_one_process_ends_on_the_doubled_batch(
    tiny_cfg, prepared, ray_local, tmp_path
):
    """The scorer on 2 ranks: a rank fails after rank 0 wrote epoch 1's checkpoint; the run started again resumes
    from it, trains epoch 2 only, and ends with the losses and weights of one process on the doubled batch
    (BERT's gradients crossing the ranks too)."""
    import json

    import ray.train

    cfg = tiny_cfg.model_copy(
        update={
            "model": tiny_cfg.model.model_copy(
                update={"dropout": 0.0, "text_dropout": 0.0, "attention_dropout": 0.0, "bert_dropout": 0.0}
            )
        }
    )
    examples = prepared.examples.subset(np.arange(2 * PER_RANK * STEPS_PER_EPOCH))
    settings = replace(
        representation_settings(cfg), epochs=EPOCHS, patience=EPOCHS, history_loss_weight=1.0, select_best=False
    )  # select_best off: both keep their last weights, not the (unvalidated) initial ones
    assert settings.train_bert and settings.full_softmax
    single, tok = new_scorer(cfg, prepared.catalogue)
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    alone = fit(
        single, tok, examples, replace(settings, batch_size=2 * PER_RANK), _no_validation, FitRun(progress=False)
    )

    log = tmp_path / "epochs.jsonl"
    job = TrainJob(
        cfg,
        prepared.catalogue,
        examples,
        replace(settings, batch_size=PER_RANK),
        _no_validation,
        checkpoint_dir=tmp_path / "ckpt",
        fingerprint="fp",
        on_epoch=_EpochLog(log, fail_at=0),
    )
    with pytest.raises(ray.train.TrainingFailedError):
        fit_on_ray(job, workers=2, storage=tmp_path / "ray-train")
    weights, resumed = fit_on_ray(replace(job, on_epoch=_EpochLog(log)), workers=2, storage=tmp_path / "ray-train-2")

    assert resumed.resumed_from == 0  # epoch 1 came from the checkpoint, only epoch 2 ran again
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["epoch"] for c in calls] == [0, 1]  # rank 0 alone called back, once per epoch it trained
    assert calls[0]["pid"] != calls[1]["pid"] != os.getpid()  # from each run's rank 0, not from this process
    losses = [row["loss"] for row in resumed.history if row["epoch"] >= 0]
    expected = [row["loss"] for row in alone.history if row["epoch"] >= 0]
    assert len(losses) == EPOCHS and np.allclose(losses, expected, rtol=0, atol=1e-5), (losses, expected)
    reference = single.state_dict()
    assert weights.keys() == reference.keys()
    moved = max(float((reference[k].float() - initial[k].float()).abs().max()) for k in reference)
    assert moved > 1e-3  # training moved the weights: agreeing is not agreeing on the initial ones
    diffs = {k: float(_comparable(k, weights[k] - reference[k]).abs().max()) for k in reference}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:8]
