"""The scorer's training: BERT representation training and feedback fine-tuning.

Both stages run on `Examples` through the one loop (`training.loop`); they differ in data, learning rate and
the dislike term. Where BERT stays frozen (CPU budget), each distinct instruction text is encoded once and
cached; the fusion transformer, projections and item-id embeddings are trained on top. With `train_bert`,
BERT is tuned end to end on the unique texts of each batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from instructrec.config import Config
from instructrec.data.split import Catalogue
from instructrec.language.instructions import Examples
from instructrec.models.backbone import load_backbone
from instructrec.models.model import (
    InstructRecScorer,
    ScorerConfig,
    autocast,
    bf16_capable,
    catalogue_log_prob,
    full_softmax_loss,
    sampled_softmax_loss,
)
from instructrec.models.sasrec import SASRec
from instructrec.ranks import Ranks
from instructrec.training import loop
from instructrec.training.loop import CHECKPOINT, FitResult, LoopRequest, OnEpoch, Schedule


def scorer_config(cfg: Config, n_items: int) -> ScorerConfig:
    """The scorer's shape from `model`, its history length from `data`."""
    m = cfg.model
    return ScorerConfig(
        n_items=n_items,
        max_history=cfg.data.max_history,
        dim=m.dim,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        dropout=m.dropout,
        attention_dropout=m.attention_dropout,
        text_dropout=m.text_dropout,
        max_text_tokens=m.max_text_tokens,
    )


def new_scorer(cfg: Config, catalogue: Catalogue) -> tuple[InstructRecScorer, object]:
    """A fresh scorer on the configured backbone, its item tower fed the catalogue's texts."""
    torch.manual_seed(cfg.train.seed)
    bert, tokenizer = load_backbone(cfg.model.backbone, seed=cfg.train.seed)
    if cfg.model.bert_dropout is not None:
        for layer in bert.modules():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = cfg.model.bert_dropout
    model = InstructRecScorer(scorer_config(cfg, catalogue.n_items), bert)
    model.to(cfg.train.device)
    model.set_catalogue(tokenizer, catalogue.texts)
    return model, tokenizer


def can_warm_start(model: InstructRecScorer, sasrec: SASRec) -> bool:
    """Same catalogue, width, depth, heads and history length: SASRec's weights fit the history tower."""
    a, b = model.config, sasrec.config
    return (a.n_items, a.dim, a.n_layers, a.n_heads, a.max_history) == (
        b.n_items,
        b.dim,
        b.n_layers,
        b.n_heads,
        b.max_len,
    )


def warm_start(model: InstructRecScorer, sasrec: SASRec) -> None:
    """Start the history tower from a trained SASRec (collaborative pre-training, as CoLLM or LLaRA inject a
    sequential model's item embeddings): its encoder and item-id embeddings are copied, and the paths of the
    words and of the item texts start at zero, so the untuned scorer already ranks a history-only request
    much as SASRec does and training spends its epochs on what SASRec cannot read (text, requests)."""
    if not can_warm_start(model, sasrec):
        raise ValueError(f"SASRec {sasrec.config} does not fit the scorer's history tower {model.config}")
    with torch.no_grad():
        model.encoder.load_state_dict(sasrec.encoder.state_dict())
        model.item_id.weight.copy_(sasrec.item.weight)
        last_fuse = cast(torch.nn.Linear, model.fuse[-1])
        for layer in (model.item_text_proj, model.text_proj, last_fuse):
            layer.weight.zero_()
            layer.bias.zero_()


@dataclass(frozen=True)
class FitSettings:
    stage: str
    epochs: int
    batch_size: int
    lr: float
    bert_lr: float
    weight_decay: float
    negatives: int
    patience: int
    train_bert: bool
    device: str
    mixed_precision: bool
    seed: int
    dislike_weight: float = 1.0
    logq_correction: bool = True
    full_softmax: bool = True  # else in-batch + `negatives` uniform samples (large catalogues)
    history_loss_weight: float = 0.0  # auxiliary next-item loss on the bare history states
    eval_every: int = 1  # validate after every n-th epoch (and the last); patience still counts epochs
    select_best: bool = True  # keep the best-validation epoch; False: the last epoch (online feedback is about
    # the future, which the offline validation split cannot see; the gate's no-regression check guards it instead)


def representation_settings(cfg: Config) -> FitSettings:
    """The representation stage's fit, from `train` and `model` (every field by name: a new one cannot slip by)."""
    t = cfg.train
    return FitSettings(
        stage="representation",
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        bert_lr=t.bert_lr,
        weight_decay=t.weight_decay,
        negatives=t.sampled_negatives,
        patience=t.patience,
        train_bert=cfg.model.train_bert,
        device=t.device,
        mixed_precision=t.mixed_precision,
        seed=t.seed,
        full_softmax=t.full_softmax,
        history_loss_weight=t.history_loss_weight,
        eval_every=t.eval_every,
    )


def feedback_settings(cfg: Config, online: bool = False) -> FitSettings:
    """Fine-tuning on feedback: offline (labelled ratings) or online (served traffic, last epoch kept)."""
    t, f = cfg.train, cfg.feedback
    epochs, lr = (f.online_epochs, f.online_lr) if online else (f.epochs, f.lr)
    return FitSettings(
        stage="online_feedback" if online else "feedback",
        epochs=epochs,
        batch_size=t.batch_size,
        lr=lr,
        bert_lr=t.bert_lr / 3,
        weight_decay=t.weight_decay,
        negatives=t.sampled_negatives,
        patience=epochs,
        train_bert=cfg.model.train_bert,
        device=t.device,
        mixed_precision=t.mixed_precision,
        seed=t.seed + 1,
        dislike_weight=f.dislike_weight,
        full_softmax=t.full_softmax,
        history_loss_weight=t.history_loss_weight,
        select_best=not online,
    )


Validate = Callable[[InstructRecScorer], dict[str, float]]


class _TextInputs:
    """Instruction text -> BERT vector: a frozen cache, or live BERT on the batch's unique texts.

    `build` does the work (tokenising, or embedding every distinct text once), when the loop starts to train:
    a reused finished run never pays for it."""

    def __init__(
        self,
        model: InstructRecScorer,
        tokenizer,
        texts: list[str],
        live: bool,
        device: str,
        cache: dict[str, torch.Tensor] | None = None,
    ):
        self.model, self.live = model, live
        self._source = (tokenizer, texts, device, cache)
        self.ids = self.mask = self.table = None

    def build(self) -> None:
        tokenizer, texts, device, cache = self._source
        if self.live:
            enc = tokenizer(
                texts, padding=True, truncation=True, max_length=self.model.config.max_text_tokens, return_tensors="pt"
            )
            self.ids, self.mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        else:
            self.table = self.model.text_vectors(tokenizer, texts, cache)

    def __call__(self, text_id: torch.Tensor) -> torch.Tensor:
        """[N] text ids (no -1) -> [N, text_dim]."""
        if not self.live:
            assert self.table is not None, "build() first"
            return self.table[text_id]
        assert self.ids is not None and self.mask is not None, "build() first"
        unique, inverse = torch.unique(text_id, return_inverse=True)
        mask = self.mask[unique]
        width = int(mask.sum(1).max())
        return self.model.encode_text(self.ids[unique, :width], mask[:, :width])[inverse]


def candidate_log_q(targets: np.ndarray, n_items: int, batch_size: int, negatives: int) -> torch.Tensor:
    """log of each item's expected count among a batch's candidates (in-batch targets + uniform negatives)."""
    freq = np.bincount(targets, minlength=n_items + 1).astype(np.float64) / max(len(targets), 1)
    expected = batch_size * freq + negatives / n_items
    expected[0] = 1.0
    return torch.as_tensor(np.log(expected), dtype=torch.float32)


def _history_loss(
    model: InstructRecScorer,
    states: torch.Tensor,
    seq: torch.Tensor,
    label: torch.Tensor,
    items: torch.Tensor,
    low_precision: bool = False,
    ranks: Ranks = Ranks(),
) -> torch.Tensor:
    """Auxiliary next-item loss on the bare history states (SASRec's objective) at every real transition.

    Every slot of every window trains the history encoder, whatever instruction type the slot drew,
    so the history-only signal is as dense as SASRec's; dislikes are left out.
    """
    real = (seq[:, :-1] > 0) & (seq[:, 1:] > 0) & (label >= 0)
    logp = catalogue_log_prob(states[real], items[1:], seq[:, 1:][real] - 1, model.item_bias[1:], low_precision)
    return -logp.sum() / ranks.divisor(real.sum()).clamp(min=1)


class _StepLoss(torch.nn.Module):
    """One step's loss on a rank's rows, as a module's forward so that DistributedDataParallel can wrap it."""

    def __init__(self, model, texts, tensors, s: FitSettings, log_q, low_precision: bool, ranks: Ranks):
        super().__init__()
        self.model = model
        self.texts, self.tensors, self.s, self.log_q = texts, tensors, s, log_q
        self.low_precision, self.ranks = low_precision, ranks

    def forward(self, rows: torch.Tensor, negatives: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """negatives: the step's shared sampled negatives, drawn on the CPU (an epoch's stay there until used)."""
        model, tensors, s = self.model, self.tensors, self.s
        negatives = None if negatives is None else negatives.to(rows.device)
        seq, weight = tensors["seq"][rows], tensors["weight"][rows]
        at = weight > 0
        target, label, weight = seq[:, 1:][at], tensors["label"][rows][at], weight[at]
        total = self.ranks.divisor(weight.sum())
        with autocast(weight.device, s.mixed_precision):
            items = model.item_vectors()
            inputs = seq[:, :-1]
            states = model.history_states(inputs, items)
            q = model.window_queries(
                self.texts(tensors["text_id"][rows][at]), states, inputs, tensors["use_history"][rows], at
            )
            if negatives is None:
                loss = full_softmax_loss(
                    model, q, target, label, weight, items, s.dislike_weight, self.low_precision, total
                )
            else:
                loss = sampled_softmax_loss(
                    model, q, target, label, weight, negatives, items, s.dislike_weight, self.log_q, total
                )
            if s.history_loss_weight > 0:
                loss = loss + s.history_loss_weight * _history_loss(
                    model, states, seq, tensors["label"][rows], items, self.low_precision, self.ranks
                )
        return loss, len(target)


def _optimizer(model: InstructRecScorer, s: FitSettings) -> torch.optim.Optimizer:
    model.bert.requires_grad_(s.train_bert)
    head = [p for n, p in model.named_parameters() if not n.startswith("bert.") and p.requires_grad]
    groups = [{"params": head, "lr": s.lr}]
    if s.train_bert:
        groups.append({"params": list(model.bert.parameters()), "lr": s.bert_lr})
    return torch.optim.AdamW(groups, weight_decay=s.weight_decay)


@dataclass(frozen=True)
class FitRun:
    """Where and how one fit runs, beside what it trains (model, examples, settings, validation).

    checkpoint_dir and fingerprint: per-epoch checkpoints, resumed or reused only under the same fingerprint.
    on_epoch: called with each epoch's row; where it also has `step(epoch, done, total, loss)`, that is called
    after every step (rank 0): a log can show progress inside a long epoch.
    text_cache: BERT vectors of texts already embedded (frozen BERT only; see InstructRecScorer.text_vectors).
    ranks: data-parallel training (instructrec.engine.distributed launches it): every rank runs the fit with the
    same examples and settings; each takes its part of each step's batch of `s.batch_size` x world windows
    from one shared permutation; only rank 0 validates, writes checkpoints and calls `on_epoch`.
    """

    checkpoint_dir: Path | None = None
    fingerprint: str = ""
    on_epoch: OnEpoch | None = None
    progress: bool = True  # a progress bar on a terminal (never in a log file)
    text_cache: dict[str, torch.Tensor] | None = None
    ranks: Ranks = field(default_factory=Ranks)


def fit(
    model: InstructRecScorer,
    tokenizer,
    examples: Examples,
    s: FitSettings,
    validate: Validate,
    run: FitRun | None = None,
) -> FitResult:
    """Train in place through the one loop; leaves the model holding its best-validation weights."""
    r = run or FitRun()
    ranks, text_cache = r.ranks, r.text_cache
    device = torch.device(s.device)
    model.to(device)
    optim = _optimizer(model, s)
    texts = _TextInputs(model, tokenizer, examples.texts, s.train_bert, s.device, None if s.train_bert else text_cache)
    tensors = {
        name: torch.as_tensor(getattr(examples, name), device=device)
        for name in ("seq", "text_id", "use_history", "label", "weight")
    }
    n_items = model.config.n_items
    log_q = (
        candidate_log_q(examples.target, n_items, s.batch_size * examples.seq.shape[1], s.negatives).to(device)
        if s.logq_correction and not s.full_softmax
        else None
    )
    low_precision = s.mixed_precision and bf16_capable(device)
    batch = s.batch_size * ranks.world

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """This rank's rows of each step, and the step's shared negatives (kept on the CPU until their step), from
        the epoch's own generator."""
        gen = torch.Generator(device="cpu").manual_seed(s.seed * 1000 + epoch)
        order = torch.randperm(len(examples), generator=gen).to(device)
        out = []
        for b in range(0, len(order), batch):
            if len(order) - b < ranks.world:  # every rank gets rows
                continue
            negatives = None if s.full_softmax else torch.randint(1, n_items + 1, (s.negatives,), generator=gen)
            out.append((order[b : b + batch].tensor_split(ranks.world)[ranks.rank], negatives))
        return out

    schedule = Schedule(s.stage, s.epochs, s.patience, s.eval_every, s.select_best, progress=r.progress)
    return loop.run(
        LoopRequest(
            model,
            _StepLoss(model, texts, tensors, s, log_q, low_precision, ranks),
            optim,
            batches,
            validate,
            schedule,
            ranks,
            r.checkpoint_dir / CHECKPOINT if r.checkpoint_dir else None,
            r.fingerprint,
            r.on_epoch,
            before_training=texts.build,
        )
    )
