"""SASRec's training (the baseline every run trains on the same split), through the one loop.

Full-softmax next-item training on every position of disjoint windows cut from each history's end; the
best-validation weights are kept. Its settings come from `baseline` in the config; seed, device and
precision follow `train`, so both models see one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from instructrec.config import Config
from instructrec.models.model import autocast, bf16_capable, catalogue_log_prob
from instructrec.models.sasrec import SASRec, SASRecConfig
from instructrec.ranks import Ranks
from instructrec.training.loop import FitResult, LoopRequest, OnEpoch, Schedule, run


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
    patience: int = 10  # stop once this many epochs have passed since the best validated one
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


class _SASRecStep(torch.nn.Module):
    """One step's loss on a rank's windows, as a forward that DistributedDataParallel can wrap."""

    def __init__(self, model: SASRec, windows: torch.Tensor, s: SASRecSettings, ranks: Ranks):
        super().__init__()
        self.model, self.windows, self.s, self.ranks = model, windows, s, ranks

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        n = real.sum()
        # the step's mean over every rank, and the targets it scored (a tensor: the loop reads it after the loss,
        # so a GPU step waits on no extra sync)
        return -logp.sum() / self.ranks.divisor(n).clamp(min=1), n


def fit_sasrec(
    model: SASRec,
    train: list[np.ndarray],
    s: SASRecSettings,
    validate: Callable[[SASRec], float],
    ranks: Ranks = Ranks(),
    on_epoch: OnEpoch | None = None,
) -> FitResult:
    """Train in place through the one loop; leaves the model holding its best-validation weights.

    validate: rank 0's validation NDCG@10. on_epoch: rank 0 calls it after every epoch with its row (loss,
    seconds, and val_ndcg@10 where validated); where it has `step(epoch, done, total, loss)`, rank 0 calls that
    after every step. ranks: data-parallel (instructrec.engine.distributed): each rank takes its part of every
    step of batch_size x world windows from one shared permutation; rank 0 validates for all.
    """
    torch.manual_seed(s.seed)
    device = torch.device(s.device)
    model.to(device)
    windows = torch.as_tensor(training_windows(train, model.config.max_len), device=device)
    optim = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(s.seed)  # one generator for the whole run: each epoch draws its order

    def batches(epoch: int) -> list[tuple[torch.Tensor]]:
        steps = torch.randperm(len(windows), generator=gen).to(device).split(s.batch_size * ranks.world)
        return [(rows.tensor_split(ranks.world)[ranks.rank],) for rows in steps if len(rows) >= ranks.world]

    schedule = Schedule(
        "sasrec", s.epochs, s.patience, s.eval_every, validate_first=False, clip_grad_norm=None, progress=False
    )
    return run(
        LoopRequest(
            model,
            _SASRecStep(model, windows, s, ranks),
            optim,
            batches,
            lambda m: {"ndcg@10": validate(m)},
            schedule,
            ranks,
            on_epoch=on_epoch,
        )
    )
