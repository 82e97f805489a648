"""SASRec (Kang & McAuley, ICDM'18): the ID-only sequential baseline, trained on the same split.

Causal self-attention over the item-id sequence; each position predicts the
next item with a full softmax over the catalogue (SASRec+ of Klenitskiy &
Vasilev, RecSys'23: cross-entropy over all items instead of one sampled
negative; thousands of items are cheap with the chunked softmax of
`model.catalogue_log_prob`). It reads the same left-padded histories as the
BERT scorer and ignores the instruction's words, so it is the reference row
every instruction type is compared with.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instructrec.models.model import CausalEncoder, autocast, bf16_capable, catalogue_log_prob
from instructrec.ranks import Ranks

if TYPE_CHECKING:  # the model imports with torch alone (bench/gpu_check.py on a bare GPU host)
    from instructrec.config import Config


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int
    max_len: int = 20
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    attention_dropout: float = 0.0


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.config = config
        self.item = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.encoder = CausalEncoder(
            config.dim, config.max_len, config.n_layers, config.n_heads, config.dropout, config.attention_dropout
        )
        nn.init.normal_(self.item.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def states(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, T, dim] causal states of left-padded item sequences."""
        return self.encoder(self.item(seq), seq)

    def scores(self, history: torch.Tensor) -> torch.Tensor:
        """[B, n_items]: next-item scores after each history (most recent item last)."""
        return self.states(history)[:, -1] @ self.item.weight[1:].T


def training_windows(train: list[np.ndarray], max_len: int) -> np.ndarray:
    """Each train sequence cut from its end into disjoint windows of max_len + 1 items (input + shifted target)."""
    from instructrec.language.instructions import pad_histories, windows  # (with the split: polars)

    spans = [tuple(int(i) for i in seq[start:end]) for seq in train for start, _, end in windows(seq, max_len)]
    return pad_histories(spans, max_len + 1)


@dataclass(frozen=True)
class SASRecSettings:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # epochs without validation gain
    eval_every: int = 5
    seed: int = 7
    device: str = "cpu"
    mixed_precision: bool = False  # bf16 autocast where the hardware has bf16 units


def baseline_config(cfg: Config, n_items: int) -> SASRecConfig:
    """SASRec's shape from `baseline`, its history length from `data` (the scorer's, so one split serves both)."""
    b = cfg.baseline
    return SASRecConfig(
        n_items=n_items,
        max_len=cfg.data.max_history,
        dim=b.dim,
        n_layers=b.n_layers,
        n_heads=b.n_heads,
        dropout=b.dropout,
        attention_dropout=b.attention_dropout,
    )


def baseline_settings(cfg: Config) -> SASRecSettings:
    """SASRec's fit from `baseline`; seed, device and precision follow `train` so both models see one machine."""
    b, t = cfg.baseline, cfg.train
    return SASRecSettings(
        epochs=b.epochs,
        batch_size=b.batch_size,
        lr=b.lr,
        weight_decay=0.0,
        patience=b.patience,
        eval_every=b.eval_every,
        seed=t.seed,
        device=t.device,
        mixed_precision=t.mixed_precision,
    )


@dataclass
class SASRecFit:
    history: list[dict]
    best_epoch: int
    best_metric: float
    seconds: float


class _SASRecStep(torch.nn.Module):
    """One step's loss on a rank's windows, as a forward that DistributedDataParallel can wrap."""

    def __init__(self, model: SASRec, windows: torch.Tensor, s: SASRecSettings, ranks: Ranks):
        super().__init__()
        self.model, self.windows, self.s, self.ranks = model, windows, s, ranks

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        w = self.windows[rows]
        inputs, targets = w[:, :-1], w[:, 1:]
        real = targets > 0  # padded slots cost nothing in the softmax
        device = w.device
        with autocast(device, self.s.mixed_precision):
            states = self.model.states(inputs)
        logp = catalogue_log_prob(
            states[real],
            self.model.item.weight[1:],
            targets[real] - 1,
            low_precision=self.s.mixed_precision and bf16_capable(device),
        )
        return -logp.sum() / self.ranks.divisor(real.sum()).clamp(min=1)  # the step's mean over every rank


def fit_sasrec(
    model: SASRec,
    train: list[np.ndarray],
    s: SASRecSettings,
    validate: Callable[[SASRec], float],
    ranks: Ranks = Ranks(),
    on_epoch: Callable[[dict], None] | None = None,
) -> SASRecFit:
    """Full-softmax next-item training on every position; keeps the best-validation weights.

    on_epoch: rank 0 calls it after every epoch with its row (loss, seconds, and val_ndcg@10 where validated);
    the returned history holds the validated rows. Where it has `step(epoch, done, total, loss)`, rank 0 calls
    that after every step.

    ranks: data-parallel (instructrec.engine.distributed): each rank takes its part of every step of
    batch_size x world windows from one shared permutation; rank 0 validates for all.
    """
    torch.manual_seed(s.seed)
    device = torch.device(s.device)
    model.to(device)
    windows = torch.as_tensor(training_windows(train, model.config.max_len), device=device)
    optim = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    step: torch.nn.Module = _SASRecStep(model, windows, s, ranks)
    if ranks.world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step)
    gen = torch.Generator().manual_seed(s.seed)
    best, best_epoch, best_state, history = float("-inf"), -1, copy.deepcopy(model.state_dict()), []
    on_step = getattr(on_epoch, "step", None) if ranks.lead else None
    started = last_row = time.perf_counter()
    for epoch in range(s.epochs):
        model.train()
        losses = []
        batches = torch.randperm(len(windows), generator=gen).to(device).split(s.batch_size * ranks.world)
        for done, rows in enumerate(batches, 1):
            if len(rows) < ranks.world:
                continue  # every rank needs rows
            loss = step(rows.tensor_split(ranks.world)[ranks.rank])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            losses.append(ranks.mean(loss.item()))
            if on_step is not None:
                on_step(epoch, done, len(batches), losses[-1])
        row = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan")}
        validated = not (epoch + 1) % s.eval_every or epoch + 1 == s.epochs
        if validated:
            row["val_ndcg@10"] = metric = ranks.from_lead(validate(model) if ranks.lead else 0.0)
            history.append(row)
        row["seconds"], last_row = time.perf_counter() - last_row, time.perf_counter()
        if on_epoch is not None and ranks.lead:
            on_epoch(row)  # every epoch: a log shows progress between validations too
        if not validated:
            continue
        if metric > best:
            best, best_epoch, best_state = metric, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= s.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return SASRecFit(history, best_epoch, best, time.perf_counter() - started)


class SASRecScorer:
    """The Scorer protocol over SASRec: the instruction's words are ignored, its history is read."""

    def __init__(self, model: SASRec, name: str = "sasrec"):
        self.name, self.model = name, model.eval()

    @torch.inference_mode()
    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray:
        h = torch.as_tensor(history[:, -self.model.config.max_len :], device=self.model.item.weight.device)
        if h.shape[1] < self.model.config.max_len:
            h = F.pad(h, (self.model.config.max_len - h.shape[1], 0))
        return self.model.scores(h).float().cpu().numpy()
