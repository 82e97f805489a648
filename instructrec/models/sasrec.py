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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instructrec.models.model import CausalEncoder


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
