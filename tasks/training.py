"""Training tasks: BERT representation training, then feedback fine-tuning."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import tracking
from instructrec.config import Config
from instructrec.data import schema
from instructrec.engine.distributed import SASRecJob, TrainJob, fit_on_ray
from instructrec.evaluation.evaluate import HEADLINE, TorchScorer, evaluate
from instructrec.evaluation.reports import epoch_step, training_curves
from instructrec.io import atomic_path
from instructrec.models.model import CHECKPOINT_FORMAT, InstructRecScorer
from instructrec.models.sasrec import SASRec, SASRecScorer
from instructrec.online.feedback import examples_from_config, read_store
from instructrec.training.baseline import baseline_config, baseline_settings, fit_sasrec
from instructrec.training.loop import FitResult
from instructrec.training.prepare import Prepared
from instructrec.training.train import (
    FitRun,
    can_warm_start,
    feedback_settings,
    fit,
    new_scorer,
    representation_settings,
    warm_start,
)
from tasks.progress import STEP_LINE_SECONDS, duration, say


@dataclass
class Trained:
    model: InstructRecScorer
    tokenizer: object
    fit: FitResult
    fingerprint: str
    feedback_until: str | None = None  # timestamp of the newest stored feedback event it was tuned on
    text_cache: dict | None = None  # its frozen BERT's vectors of this run's texts (None when BERT is tuned)


@dataclass
class Baseline:
    model: SASRec
    fingerprint: str  # of its data and config: what a scorer started from it depends on


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit_run(cfg: Config, fp: str, epochs: EpochLogger, cache: dict | None) -> FitRun:
    """How a task's fit runs: checkpoints under the run's fingerprint, epochs logged live, the shared text cache."""
    return FitRun(cfg.paths.checkpoints / fp, fp, epochs, cfg.progress, cache)


def text_cache(cfg: Config) -> dict | None:
    """A run's store of instruction-text vectors, while BERT stays frozen (they never change then)."""
    return None if cfg.model.train_bert else {}


def validator(prepared: Prepared, tokenizer, cfg: Config, cache: dict | None):
    """Validation NDCG@10 (mean over instruction types) on the validation targets."""
    ids = prepared.catalogue.item_ids

    def run(model: InstructRecScorer) -> dict[str, float]:
        scorer = TorchScorer("valid", model, tokenizer, ids, ids, cfg.train.device, cache)
        report = evaluate(
            scorer, prepared.valid_cases, prepared.split, cfg.data.cold_user_max_train, cfg.data.long_tail_share
        )
        out = {"ndcg@10": report.overall["ndcg@10"]}
        out.update({f"{t.replace('/', '_')}_ndcg@10": v["ndcg@10"] for t, v in report.by_type.items()})
        return out

    return run


# An epoch's history row -> its curve in the run: one series per stage (`<stage>/train_loss`, ...), the MLflow
# step the epoch number (0: the model before training, n: after epoch n). The per-type validation scores stay
# in `<stage>/history.json` and `<stage>/curves.png`, not in metrics.
CURVES = {"loss": "train_loss", "val_ndcg@10": "val_ndcg@10", "seconds": "epoch_seconds"}


class EpochLogger:
    """Logs epochs live, from this process or from DDP rank 0's (it carries the tracking URI there), as MLflow
    curves and as one progress line each (loss, validation NDCG@10, elapsed, what is left at most): a log file
    has no progress bar. `replay` adds the epochs no process logged live (restored from a checkpoint: resumed
    or reused runs), as curves only."""

    def __init__(self, run_id: str, stage: str, epochs: int = 0):
        self.run_id, self.stage, self.tracking_uri = run_id, stage, tracking.tracking_uri()
        self.epochs, self.started, self.best = epochs, time.time(), float("-inf")  # wall clock: DDP ranks share it
        self.first: tuple[int, float] | None = None  # (epoch, time) of the first row this process logged
        self.epoch_started: tuple[int, int, float] | None = None  # (epoch, step, time) first seen, for `step`
        self.last_line = self.started

    def __call__(self, row: dict) -> None:
        self._log(row)
        self._say(self.line(row))

    def step(self, epoch: int, done: int, total: int, loss: float) -> None:
        """Inside an epoch, a line every STEP_LINE_SECONDS: a long epoch still shows progress in a log."""
        now = time.time()
        if self.epoch_started is None or self.epoch_started[0] != epoch:
            self.epoch_started = (epoch, done, now)
        _, first, since = self.epoch_started
        if now - self.last_line < STEP_LINE_SECONDS or done >= total or done == first:
            return
        left = (now - since) / (done - first) * (total - done)
        self._say(
            f"{self.stage} epoch {epoch + 1}/{self.epochs or '?'}: {done / total:.0%} of {total} steps, loss "
            f"{loss:.4f}; {duration(now - self.started)} elapsed, this epoch about {duration(left)} left"
        )

    def _say(self, line: str) -> None:
        self.last_line = time.time()
        say(line)

    def _log(self, row: dict) -> None:
        tracking.use_store(self.tracking_uri)
        tracking.log_metrics(
            self.run_id,
            {f"{self.stage}/{name}": row[k] for k, name in CURVES.items() if k in row},
            step=epoch_step(row["epoch"]),
        )

    def line(self, row: dict) -> str:
        """'representation epoch 3/40: loss 5.1234, val NDCG@10 0.0932 (best 0.0950); 2m03s elapsed, at most
        12m40s left': the estimate assumes every remaining epoch runs (early stopping can end sooner); a resumed
        run's first line counts the restored epochs as run, its later lines do not."""
        now = time.time()
        done, elapsed = row["epoch"] + 1, now - self.started
        self.first = self.first or (row["epoch"], now)
        # the pace since the first row (a resumed run starts past epoch 0); before a second row, since the start
        first_epoch, first_time = self.first
        per_epoch = (now - first_time) / (row["epoch"] - first_epoch) if row["epoch"] > first_epoch else elapsed / done
        metric = row.get("val_ndcg@10")
        if metric is not None:
            self.best = max(self.best, metric)
        parts = [f"{self.stage} epoch {done}/{self.epochs or '?'}: loss {row['loss']:.4f}"]
        if metric is not None:
            parts.append(f", val NDCG@10 {metric:.4f} (best {self.best:.4f})")
        parts.append(f"; {duration(elapsed)} elapsed")
        if self.epochs > done:
            parts.append(f", at most {duration(per_epoch * (self.epochs - done))} left")
        return "".join(parts)

    def replay(self, history: list[dict]) -> None:
        logged = tracking.logged_steps(self.run_id, f"{self.stage}/{CURVES['seconds']}")
        for row in history:
            if epoch_step(row["epoch"]) not in logged:
                self._log(row)


def _log_curves(run_id: str, stage: str, history: list[dict], best_epoch: int) -> None:
    """The stage's history as a table and a plot: loss and every validation NDCG@10 per epoch, the kept
    (best) epoch marked."""
    tracking.log_table(run_id, history, f"{stage}/history.json")
    fig = training_curves(stage, history, best_epoch)
    if fig is not None:
        tracking.log_figure(run_id, fig, f"{stage}/curves.png")


def _log_best(run_id: str, stage: str, history: list[dict], best_metric: float, best_epoch: int, **extra: float):
    """The stage's summary beside its curves: the kept model's validation NDCG@10 and its epoch (what the run
    overview shows; the curve's own latest value is the last epoch's), the epochs plotted with it marked."""
    values = {f"{stage}/best_val_ndcg@10": best_metric, f"{stage}/best_epoch": epoch_step(best_epoch)}
    tracking.log_metrics(run_id, values | {f"{stage}/{k}": v for k, v in extra.items()})
    _log_curves(run_id, stage, history, best_epoch)


def _summarise(run_id: str, stage: str, result: FitResult, epochs: EpochLogger) -> None:
    epochs.replay(result.history)
    if result.resumed_from is not None:
        tracking.set_tags(run_id, {f"{stage}.resumed_after_epoch": result.resumed_from + 1})
    _log_best(
        run_id, stage, result.history, result.best_metric, result.best_epoch, examples_per_s=result.examples_per_s
    )


@task(name="train-sasrec-baseline", cache_policy=NO_CACHE)
def train_baseline(cfg: Config, prepared: Prepared, snapshot_hash: str, run_id: str) -> Baseline | None:
    """SASRec on the same split: the ID-only sequential reference row (reused when data and config match)."""
    b = cfg.baseline
    if not b.enabled:
        return None
    logger = get_run_logger()
    torch.manual_seed(cfg.train.seed)  # the initial weights too: the same data and config give the same baseline
    model = SASRec(baseline_config(cfg, prepared.catalogue.n_items))
    fp = fingerprint("sasrec", CHECKPOINT_FORMAT, snapshot_hash, cfg.data, b, cfg.train.seed, cfg.train.mixed_precision)
    path = cfg.paths.checkpoints / fp / "sasrec.pt"
    if path.exists():
        state = torch.load(path, map_location=cfg.train.device, weights_only=False)
        model.load_state_dict(state["model"])
        model.to(cfg.train.device).eval()
        logger.info("reused SASRec checkpoint %s (same data and config)", fp)
        history = state["history"]
    else:
        settings = baseline_settings(cfg)
        epochs = EpochLogger(run_id, "sasrec", settings.epochs)
        case = {HEADLINE: prepared.valid_cases[HEADLINE]}

        def validate(m: SASRec) -> float:
            return evaluate(SASRecScorer(m), case, prepared.split).by_type[HEADLINE]["ndcg@10"]

        if cfg.runtime.engine == "ray":
            job = SASRecJob(
                cfg,
                prepared.split.train,
                prepared.catalogue.n_items,
                per_rank(settings, cfg),
                validate,
                init_state=model.state_dict(),
                on_epoch=epochs,
            )
            result = train_on_ray(cfg, model, job, fp)
        else:
            result = fit_sasrec(model, prepared.split.train, settings, validate, on_epoch=epochs)
        history = result.history
        with atomic_path(path) as tmp:
            torch.save({"model": model.state_dict(), "history": history}, tmp)
        logger.info(
            "SASRec: best validation P1/I0 NDCG@10 %.4f at epoch %d (%.0f s)",
            result.best_metric,
            result.best_epoch + 1,
            result.seconds,
        )
    EpochLogger(run_id, "sasrec", b.epochs).replay(history)  # the epochs not logged live (a reused checkpoint's)
    validated = [r for r in history if "val_ndcg@10" in r]
    if validated:
        best = max(validated, key=lambda r: r["val_ndcg@10"])  # the first best: the epoch fit_sasrec kept
        _log_best(run_id, "sasrec", history, best["val_ndcg@10"], best["epoch"])
    return Baseline(model, fp)


@task(name="train-representation", cache_policy=NO_CACHE)
def train_representation(
    cfg: Config, prepared: Prepared, snapshot_hash: str, run_id: str, baseline: Baseline | None = None
) -> Trained:
    """BERT two-tower training, its history tower started from SASRec where configured and it fits; resumes from
    its checkpoint after a crash."""
    logger = get_run_logger()
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"profile {cfg.profile!r} trains on CUDA, but torch sees no GPU "
            "(CPU-only torch build, or no device); use --profile cpu, or install the CUDA build of torch"
        )
    model, tokenizer = new_scorer(cfg, prepared.catalogue)
    init = baseline if cfg.train.init_from_baseline and baseline is not None else None
    if init is not None and not can_warm_start(model, init.model):
        logger.warning(
            "SASRec %s does not fit the history tower %s: training from scratch", init.model.config, model.config
        )
        init = None
    if init is not None:
        warm_start(model, init.model)
        logger.info("history tower started from SASRec %s", init.fingerprint)
    tracking.set_tags(run_id, {"representation.init": f"sasrec {init.fingerprint}" if init else "scratch"})
    settings = representation_settings(cfg)
    fp = fingerprint(
        "representation",
        CHECKPOINT_FORMAT,
        snapshot_hash,
        cfg.data,
        cfg.model,
        cfg.train,
        init.fingerprint if init else None,
    )
    epochs = EpochLogger(run_id, "representation", cfg.train.epochs)
    cache = text_cache(cfg)
    validate = validator(prepared, tokenizer, cfg, cache)
    if cfg.runtime.engine == "ray":
        job = TrainJob(
            cfg,
            prepared.catalogue,
            prepared.examples,
            per_rank(settings, cfg),
            validate,
            init_state=model.state_dict(),
            text_cache=cache or {},
            checkpoint_dir=cfg.paths.checkpoints / fp / f"ddp-{cfg.runtime.train_workers}",
            fingerprint=fp,
            on_epoch=epochs,
        )
        result = train_on_ray(cfg, model, job, fp)
    else:
        result = fit(model, tokenizer, prepared.examples, settings, validate, fit_run(cfg, fp, epochs, cache))
    if result.reused:
        logger.info("reused the finished training of checkpoint %s (same data and config): nothing to train", fp)
    elif result.resumed_from is not None:
        logger.info("resumed representation training after epoch %d (checkpoint %s)", result.resumed_from + 1, fp)
    logger.info("representation: best validation NDCG@10 %.4f at epoch %d", result.best_metric, result.best_epoch + 1)
    _summarise(run_id, "representation", result, epochs)
    return Trained(model, tokenizer, result, fp, text_cache=cache)


def per_rank(settings, cfg: Config):
    """The stage's settings for one of runtime.train_workers DDP ranks: each takes batch_size / ranks windows
    of every step, so a step still trains on the configured batch."""
    return replace(settings, batch_size=max(1, settings.batch_size // cfg.runtime.train_workers))


def train_on_ray(cfg: Config, model: torch.nn.Module, job: TrainJob | SASRecJob, fp: str):
    """Run the job on runtime.train_workers DDP ranks of the Ray cluster; `model` then holds rank 0's best
    weights. The scorer's ranks resume from rank 0's last epoch checkpoint after a crash and rank 0 logs
    its epochs live; SASRec's epochs are logged when it returns, as in one process."""
    workers = cfg.runtime.train_workers
    weights, result = fit_on_ray(job, workers, cfg.paths.checkpoints / fp / "ray", cfg.runtime)
    model.load_state_dict(weights)
    model.eval()
    get_run_logger().info("%s trained by %d DDP ranks on Ray", job.name, workers)
    return result


@task(name="finetune-feedback", cache_policy=NO_CACHE)
def finetune_on_feedback(cfg: Config, prepared: Prepared, base: Trained, run_id: str) -> Trained:
    """Likes pull, dislikes push (ratings of the train part + the feedback store), with replay."""
    logger = get_run_logger()
    store = read_store(cfg.paths.feedback)
    examples, stats = examples_from_config(cfg, prepared.split, store, prepared.examples)
    settings = feedback_settings(cfg)
    fp = fingerprint("feedback", base.fingerprint, cfg.feedback, sorted(store[schema.EVENT_ID].to_list()))
    epochs = EpochLogger(run_id, "feedback", settings.epochs)
    cache = base.text_cache  # None already when BERT is tuned (text_cache)
    validate = validator(prepared, base.tokenizer, cfg, cache)
    result = fit(base.model, base.tokenizer, examples, settings, validate, fit_run(cfg, fp, epochs, cache))
    before = result.history[0]["val_ndcg@10"]  # also the feedback/val_ndcg@10 curve's step 0
    tracking.log_json(  # the examples it tuned on (were feedback/<count> metrics)
        run_id,
        {**stats.as_dict(), "val_ndcg@10_before": before, "val_ndcg@10_after": result.best_metric},
        "feedback/examples.json",
    )
    logger.info(
        "feedback fine-tuning on %s: validation NDCG@10 %.4f -> %.4f", stats.as_dict(), before, result.best_metric
    )
    _summarise(run_id, "feedback", result, epochs)
    return Trained(base.model, base.tokenizer, result, fp, newest_event(store), cache)


def newest_event(store) -> str | None:
    return store[schema.TIMESTAMP].max().isoformat() if store.height else None
