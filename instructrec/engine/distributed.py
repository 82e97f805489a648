"""Data-parallel training of the scorer and of SASRec on a Ray cluster.

Ray Train's TorchTrainer starts the ranks and their process group (gloo on CPU, NCCL on GPU);
each rank builds the same model and runs its loop (`fit`, `fit_sasrec`) on its part of every
step (see instructrec.ranks); rank 0 validates, writes the per-epoch checkpoint every rank resumes
from after a crash, calls the epoch callback (MLflow, from the tasks layer) and hands its weights
back through a Ray Train checkpoint.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from instructrec.config import Config, RuntimeConfig
from instructrec.data.split import Catalogue
from instructrec.engine.cluster import ray_cluster
from instructrec.language.instructions import Examples
from instructrec.models.sasrec import SASRec
from instructrec.ranks import Ranks
from instructrec.training.baseline import SASRecSettings, baseline_config, fit_sasrec
from instructrec.training.loop import FitResult, OnEpoch
from instructrec.training.train import FitRun, FitSettings, Validate, fit, new_scorer

WEIGHTS = "weights.pt"


def _no_validation(model) -> dict[str, float]:
    return {"ndcg@10": 0.0}


@dataclass(frozen=True)
class TrainJob:
    """Everything a rank needs, shipped to it by Ray (so: picklable, `validate` included).

    settings.batch_size is per rank: a step trains on batch_size x workers windows. With a
    checkpoint_dir (storage every rank reads: shared on a multi-node cluster) a rerun with the same
    fingerprint resumes after the last epoch rank 0 finished, as `fit` does in one process.
    """

    cfg: Config
    catalogue: Catalogue
    examples: Examples
    settings: FitSettings
    validate: Validate = _no_validation
    init_state: dict[str, torch.Tensor] | None = None  # starting weights (a warm start); None: new_scorer's
    text_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    fingerprint: str = ""
    on_epoch: OnEpoch | None = None  # rank 0 calls it after each epoch (picklable: it runs in the rank's process)

    @property
    def name(self) -> str:
        return self.settings.stage

    @property
    def device(self) -> str:
        return self.settings.device

    def run(self, ranks: Ranks) -> tuple[torch.nn.Module, FitResult]:
        model, tokenizer = new_scorer(self.cfg, self.catalogue)
        if self.init_state is not None:
            model.load_state_dict(self.init_state)
        run = FitRun(self.checkpoint_dir, self.fingerprint, self.on_epoch, False, self.text_cache, ranks)
        result = fit(model, tokenizer, self.examples, self.settings, self.validate, run)
        return model, result


def _no_sasrec_validation(model) -> float:
    return 0.0


@dataclass(frozen=True)
class SASRecJob:
    """SASRec's training on every rank; settings.batch_size is per rank, as in TrainJob."""

    cfg: Config
    train: list  # per user: train item indices, time order (SplitData.train)
    n_items: int
    settings: SASRecSettings
    validate: Callable[[SASRec], float] = _no_sasrec_validation
    init_state: dict[str, torch.Tensor] | None = None
    on_epoch: OnEpoch | None = None  # rank 0 calls it after every epoch (picklable, as TrainJob's)

    name = "sasrec"

    @property
    def device(self) -> str:
        return self.settings.device

    def run(self, ranks: Ranks) -> tuple[torch.nn.Module, FitResult]:
        torch.manual_seed(self.cfg.train.seed)
        model = SASRec(baseline_config(self.cfg, self.n_items))
        if self.init_state is not None:
            model.load_state_dict(self.init_state)
        return model, fit_sasrec(model, self.train, self.settings, self.validate, ranks, self.on_epoch)


def _rank_main(config: dict) -> None:
    """One rank's whole run (Ray Train calls it on every worker, the process group already up)."""
    import ray.train

    job: TrainJob | SASRecJob = config["job"]
    ranks = Ranks.current()
    model, result = job.run(ranks)
    if not ranks.lead:
        ray.train.report({"best_metric": result.best_metric})
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model": model.state_dict(), "result": result}, Path(tmp) / WEIGHTS)
        ray.train.report({"best_metric": result.best_metric}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def fit_on_ray(job: TrainJob | SASRecJob, workers: int, storage: Path, runtime: RuntimeConfig | None = None):
    """Train with `workers` DDP ranks; returns rank 0's final (best-validation) weights and its fit result
    (a FitResult).

    storage: where Ray Train keeps the run and its checkpoint (shared storage on a multi-node cluster).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    on_gpu = job.device.startswith("cuda")
    with ray_cluster(runtime or RuntimeConfig()):
        trainer = TorchTrainer(
            _rank_main,
            train_loop_config={"job": job},
            torch_config=TorchConfig(backend="nccl" if on_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=on_gpu),
            run_config=RunConfig(storage_path=str(storage.resolve()), name=f"{job.name}-ddp"),
        )
        outcome = trainer.fit()
        if outcome.checkpoint is None:
            raise RuntimeError(f"distributed {job.name} training returned no checkpoint: {outcome.error}")
        with outcome.checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / WEIGHTS, map_location="cpu", weights_only=False)
    return saved["model"], saved["result"]
