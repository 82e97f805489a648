"""One training loop for every model: SASRec, the scorer's representation training and feedback fine-tuning.

Epochs, the validation cadence, early stopping, the best weights, resumable checkpoints and data-parallel
ranks live here once. A model brings a `LoopRequest`: its step (a module whose forward takes one batch's
arguments and returns the loss and how many examples it scored, so DistributedDataParallel can wrap it), its
optimiser, the batches of each epoch (this rank's share, drawn from the model's own seeded generator) and
its validation.

A checkpoint is written atomically after every epoch (where the request names one); a restarted run with
the same fingerprint resumes after the last finished epoch, and a finished run is reused as is.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from instructrec.io import atomic_path
from instructrec.ranks import Ranks

CHECKPOINT = "last.pt"

Validate = Callable[[Any], dict[str, float]]  # the request's model -> rank 0's metrics; "ndcg@10" decides
OnEpoch = Callable[[dict], None]
Batches = Callable[[int], Sequence[tuple]]  # epoch -> this rank's step arguments, one tuple per step


@dataclass(frozen=True)
class Schedule:
    """When a loop validates, keeps and stops."""

    stage: str  # the progress bar's name
    epochs: int  # at most
    patience: int  # stop after this many epochs past the best one (validated or not)
    eval_every: int = 1  # validate after every n-th epoch, and after the last
    select_best: bool = True  # keep the best-validation weights; False: the last epoch's
    validate_first: bool = True  # validate the starting weights (row -1): they stay if no epoch beats them
    clip_grad_norm: float | None = 1.0
    progress: bool = True  # a progress bar on a terminal (never in a log file)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch (-1: the starting weights)
    best_epoch: int = -1
    best_metric: float = float("-inf")
    resumed_from: int | None = None  # last finished epoch found on disk
    reused: bool = False  # the checkpoint was of a finished run: nothing was trained
    examples_per_s: float = 0.0
    seconds: float = 0.0  # the whole loop, validations included


@dataclass
class LoopRequest:
    model: torch.nn.Module
    step: torch.nn.Module  # forward(*batch) -> (loss, examples scored: an int or a 0-d tensor)
    optimizer: torch.optim.Optimizer
    batches: Batches
    validate: Validate
    schedule: Schedule
    ranks: Ranks = field(default_factory=Ranks)
    checkpoint: Path | None = None  # the file; None: no checkpoints
    fingerprint: str = ""  # a checkpoint with another fingerprint is never resumed
    on_epoch: OnEpoch | None = None  # rank 0, after each epoch; its `step(epoch, done, total, loss)` after each step
    before_training: Callable[[], None] | None = None  # once, where an epoch will run (not for a reused run)


def run(req: LoopRequest) -> FitResult:
    """Train in place; leaves the model holding its kept weights (the best validated, or the last), in eval mode.

    Every rank runs this with the same request; only rank 0 validates (every rank learns the metric, so all
    take the same decisions), writes checkpoints and calls `on_epoch`.
    """
    model, s, ranks = req.model, req.schedule, req.ranks
    result, start_epoch, best_state = _resume(req)
    if best_state is None:
        best_state = copy.deepcopy(model.state_dict())
        if s.validate_first:
            metrics = _validated(req)
            result.best_metric = metrics["ndcg@10"]
            result.history.append({"epoch": -1, "loss": float("nan"), **{f"val_{k}": v for k, v in metrics.items()}})
    if start_epoch >= s.epochs:  # a finished run with the same fingerprint: reuse it
        model.load_state_dict(best_state)
        model.eval()
        return result
    if req.before_training is not None:
        req.before_training()
    step = _parallel(req.step, model, ranks)
    on_step = getattr(req.on_epoch, "step", None) if ranks.lead else None
    seen, started = 0, time.perf_counter()
    for epoch in range(start_epoch, s.epochs):
        if result.best_epoch >= 0 and epoch - result.best_epoch > s.patience:
            break
        model.train()
        t0 = time.perf_counter()
        batches = req.batches(epoch)
        losses, n_epoch = [], 0
        # disable=None: bars only on a terminal (a log file would get one line of carriage returns per stage)
        bar = tqdm(
            batches,
            desc=f"{s.stage} epoch {epoch + 1}/{s.epochs}",
            disable=None if s.progress and ranks.lead else True,
            leave=False,
            mininterval=2.0,
        )
        for done, args in enumerate(bar, 1):
            loss, n = step(*args)
            req.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad_norm)
            req.optimizer.step()
            losses.append(ranks.mean(loss.item()))
            n_epoch += int(n)
            if on_step is not None:
                on_step(epoch, done, len(batches), losses[-1])
        seen += n_epoch
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "seconds": time.perf_counter() - t0,
        }
        result.history.append(row)
        if not (epoch + 1) % s.eval_every or epoch + 1 == s.epochs:
            metrics = _validated(req)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            if metrics["ndcg@10"] > result.best_metric or not s.select_best:
                result.best_metric, result.best_epoch = metrics["ndcg@10"], epoch
                best_state = copy.deepcopy(model.state_dict())
        if req.checkpoint and ranks.lead:  # before the callback: a failing logger never loses a finished epoch
            _save(req, epoch, best_state, result, finished=False)
        if req.on_epoch and ranks.lead:
            req.on_epoch(row)
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    result.examples_per_s = seen / result.seconds if seen else 0.0
    if req.checkpoint and ranks.lead:
        _save(req, result.history[-1]["epoch"], best_state, result, finished=True)
    return result


def _validated(req: LoopRequest) -> dict[str, float]:
    """Rank 0 validates; every rank learns its NDCG@10, so all take the same early-stopping decisions."""
    metrics = req.validate(req.model) if req.ranks.lead else {}
    return {**metrics, "ndcg@10": req.ranks.from_lead(metrics.get("ndcg@10", 0.0))}


def _parallel(step: torch.nn.Module, model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """The step as DistributedDataParallel wraps it where there are several ranks (gradients averaged)."""
    if ranks.world == 1:
        return step
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)


def _resume(req: LoopRequest) -> tuple[FitResult, int, dict | None]:
    """(result so far, first epoch to run, best weights so far) from the request's checkpoint, when it is of
    this fingerprint; else a fresh start."""
    result = FitResult()
    ckpt = req.checkpoint
    if ckpt is None or not ckpt.exists():
        return result, 0, None
    state = torch.load(ckpt, map_location=next(req.model.parameters()).device, weights_only=False)
    if state.get("fingerprint") != req.fingerprint:
        return result, 0, None
    req.model.load_state_dict(state["model"])
    req.optimizer.load_state_dict(state["optim"])
    result.history, result.best_epoch, result.best_metric = state["history"], state["best_epoch"], state["best_metric"]
    result.resumed_from = state["epoch"]
    if state.get("finished"):
        result.reused = True
        return result, req.schedule.epochs, state["best_state"]
    return result, state["epoch"] + 1, state["best_state"]


def _save(req: LoopRequest, epoch: int, best_state: dict, result: FitResult, finished: bool) -> None:
    assert req.checkpoint is not None
    state = {
        "fingerprint": req.fingerprint,
        "epoch": epoch,
        "model": req.model.state_dict(),
        "optim": req.optimizer.state_dict(),
        "best_state": best_state,
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "history": result.history,
        "finished": finished,
    }
    with atomic_path(req.checkpoint) as tmp:
        torch.save(state, tmp)
