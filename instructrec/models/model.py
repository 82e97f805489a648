"""The BERT two-tower scorer: one file, its config, and its save/load contract.

Instruction tower: a causal transformer reads the history through item
vectors (SASRec-shaped; UniSRec-style: history items are not re-tokenised),
BERT reads the instruction's words (mean-pooled), and a small MLP fuses the
two. Causality lets training score every position of a history window in one
pass, as SASRec does; P0/P2 positions see a learned "no history" state.
Item tower: BERT features of each item's text, computed once per catalogue,
plus an item-id embedding (hybrid text + id). score = <query, item> + bias.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizerFast  # pyright: ignore[reportAttributeAccessIssue]  (lazy module)

from instructrec.io import atomic_dir


@dataclass
class ScorerConfig:
    n_items: int  # catalogue size (index 0 is padding)
    max_history: int = 20  # history slots, left-padded, most recent last
    dim: int = 128  # width of the shared query/item space
    n_layers: int = 2  # fusion transformer depth
    n_heads: int = 4
    dropout: float = 0.2
    attention_dropout: float = 0.0  # on the history encoder's attention weights
    text_dropout: float = 0.0  # dropout on the BERT vector of the words: robustness to unseen wordings
    max_text_tokens: int = 64
    bert: dict = field(default_factory=dict)  # BertConfig.to_dict() of the backbone


class Block(nn.Module):
    """Pre-norm transformer block with explicit attention (exports cleanly to ONNX)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, attention_dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)
        self.attention_drop = nn.Dropout(attention_dropout)  # on the [B, heads, T, T] weights: costly on CPU

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """bias broadcasts to [B, heads, T, T]: 0 where a query may attend, a large negative where not."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) * (d // self.n_heads) ** -0.5 + bias
        y = (self.attention_drop(att.softmax(-1)) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.norm2(x)))


def causal_bias(seq: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] attention bias: no future slots, no padding (a padded slot attends to itself)."""
    slot = torch.arange(seq.shape[1], device=seq.device)
    query, key = slot[:, None], slot[None, :]
    blocked = ((key > query)[None] | (seq == 0)[:, None, :]) & (key != query)[None]
    return torch.zeros(blocked.shape, dtype=dtype, device=seq.device).masked_fill(blocked, torch.finfo(dtype).min)[
        :, None
    ]


class CausalEncoder(nn.Module):
    """SASRec's sequence encoder: scaled item vectors + learned positions, causal pre-norm blocks, final norm.

    Shared by the scorer's history tower and the SASRec baseline, so the baseline differs only in
    what it does not have (item text, the instruction's words).
    """

    def __init__(
        self, dim: int, max_len: int, n_layers: int, n_heads: int, dropout: float, attention_dropout: float = 0.0
    ):
        super().__init__()
        self.dim = dim
        self.position = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads, dropout, attention_dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, vectors: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """vectors [B, T, dim] of the items seq [B, T] (left-padded) -> [B, T, dim]: slot t sees seq[:, :t + 1]."""
        x = vectors * self.dim**0.5 + self.position.weight[-seq.shape[1] :]
        x = self.drop(x * (seq > 0).unsqueeze(-1).to(x.dtype))
        bias = causal_bias(seq, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)


class InstructRecScorer(nn.Module):
    item_text: torch.Tensor  # buffer: frozen BERT features per item

    def __init__(self, config: ScorerConfig, bert: BertModel | None = None):
        super().__init__()
        self.config = config
        # eager attention always: the form ONNX Runtime fuses into its Attention op (SDPA exports unfused)
        self.bert = (
            bert
            if bert is not None
            else BertModel(BertConfig(**config.bert, attn_implementation="eager"), add_pooling_layer=False)  # pyright: ignore[reportCallIssue]
        )
        if not config.bert:
            config.bert = self.bert.config.to_dict()
        text_dim, dim, n = self.bert.config.hidden_size, config.dim, config.n_items + 1
        self.register_buffer("item_text", torch.zeros(n, text_dim))  # frozen BERT features per item
        self.item_id = nn.Embedding(n, dim, padding_idx=0)
        self.item_text_proj = nn.Linear(text_dim, dim)
        self.item_bias = nn.Parameter(torch.zeros(n))
        self.text_proj = nn.Linear(text_dim, dim)
        self.encoder = CausalEncoder(
            dim, config.max_history, config.n_layers, config.n_heads, config.dropout, config.attention_dropout
        )
        self.no_history = nn.Parameter(torch.zeros(dim))  # the history state of P0/P2 instructions
        self.fuse = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(config.dropout)
        self.text_drop = nn.Dropout(config.text_dropout)
        nn.init.normal_(self.item_id.weight, std=0.02)
        with torch.no_grad():
            self.item_id.weight[0].zero_()

    # -- towers ---------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled BERT states (the pooling all-MiniLM-L6-v2 was trained with)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def item_vectors(self) -> torch.Tensor:
        """[n_items + 1, dim]; row 0 is padding."""
        return self.item_text_proj(self.item_text) + self.item_id.weight

    def history_states(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, T, dim]: slot t summarises history[:, :t + 1] (left-padded, most recent last)."""
        return self.encoder(items[history], history)

    def fuse_query(self, state: torch.Tensor, text_vec: torch.Tensor) -> torch.Tensor:
        """History state + the instruction's words -> query (any leading shape).

        Residual: words that add nothing leave the history state as the query, so a history-only
        request is scored as the history tower alone scores it (exactly so after `warm_start`).
        """
        words = self.text_proj(self.text_drop(text_vec))
        return state + words + self.drop(self.fuse(torch.cat([state, words], dim=-1)))

    def query(self, text_vec: torch.Tensor, history: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """One query per instruction from its words and history -> [B, dim]."""
        items = self.item_vectors() if items is None else items
        has_history = history[:, -1:] > 0
        if torch.jit.is_tracing() or bool(has_history.any()):  # P0/P2 batches skip the history encoder
            state = torch.where(has_history, self.history_states(history, items)[:, -1], self.no_history)
        else:
            state = self.no_history.expand(len(history), -1)
        return self.fuse_query(state, text_vec)

    def window_queries(
        self,
        text_vec: torch.Tensor,
        states: torch.Tensor,
        seq: torch.Tensor,
        use_history: torch.Tensor,
        at: torch.Tensor,
    ) -> torch.Tensor:
        """[N, dim]: queries at the slots `at` [B, T] (bool) of history windows seq [B, T] (training).

        states = history_states(seq): one causal pass serves every slot. text_vec [N, text_dim]
        holds the words at those slots; use_history [B, T] is False where the instruction states
        no history.
        """
        has = (use_history & (seq > 0)).unsqueeze(-1)
        return self.fuse_query(torch.where(has, states, self.no_history)[at], text_vec)

    def scores(self, query: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """[B, n_items]: every real item (padding column dropped)."""
        items = self.item_vectors() if items is None else items
        return query @ items[1:].T + self.item_bias[1:]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        items = self.item_vectors()
        return self.scores(self.query(self.encode_text(input_ids, attention_mask), history, items), items)

    # -- catalogue ------------------------------------------------------------
    @torch.inference_mode()
    def embed_texts(self, tokenizer: BertTokenizerFast, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """BERT features for many texts, batched by length to waste little padding."""
        was_training = self.training
        self.eval()
        device = self.item_text.device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.bert.config.hidden_size, device=device)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.config.max_text_tokens,
                return_tensors="pt",
            ).to(device)
            out[rows] = self.encode_text(enc["input_ids"], enc["attention_mask"]).float()
        self.train(was_training)
        return out

    def text_vectors(
        self, tokenizer: BertTokenizerFast, texts: list[str], cache: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """[len(texts), text_dim] BERT vectors; `cache` (text -> vector) keeps them across calls and stages.

        Pass a cache only while BERT is frozen: its vectors never change then, and a run's instruction
        texts repeat (templates) across training, validation, evaluation and export.
        """
        if cache is None:
            return self.embed_texts(tokenizer, texts)
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, self.embed_texts(tokenizer, missing), strict=True))
        return torch.stack([cache[t] for t in texts])

    def set_catalogue(self, tokenizer: BertTokenizerFast, item_texts: list[str]) -> None:
        features = self.embed_texts(tokenizer, item_texts)
        with torch.no_grad():
            self.item_text[1:] = features
            self.item_text[0].zero_()

    def tokenize(self, tokenizer: BertTokenizerFast, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_text_tokens, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.inference_mode()
def item_tower(model: InstructRecScorer) -> np.ndarray:
    """[n_items, dim] item vectors in catalogue order (padding row dropped), for similarity outside PyTorch."""
    return model.item_vectors()[1:].float().cpu().numpy()


def extend_catalogue(model: InstructRecScorer, tokenizer: BertTokenizerFast, texts: list[str]) -> InstructRecScorer:
    """A copy that also scores len(texts) new items, without training: each new item's vector is its
    text's BERT features through the trained projection, with no id embedding (zero) and the median
    item bias. Its indices follow the old ones (n_items + 1, ...)."""
    n, m = model.config.n_items, len(texts)
    config = ScorerConfig(**{**asdict(model.config), "n_items": n + m})
    grown = InstructRecScorer(config, bert=BertModel(model.bert.config, add_pooling_layer=False))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    features = model.embed_texts(tokenizer, texts).to(state["item_text"])
    state["item_text"] = torch.cat([state["item_text"], features])
    state["item_id.weight"] = torch.cat([state["item_id.weight"], state["item_id.weight"].new_zeros(m, config.dim)])
    bias = state["item_bias"]
    state["item_bias"] = torch.cat([bias, bias[1:].median().expand(m)])
    grown.load_state_dict(state)
    return grown.to(model.item_text.device).eval()


# bump when parameter names or shapes change: checkpoints of another format are never resumed or reused
CHECKPOINT_FORMAT = 3
WEIGHTS, CONFIG, ITEMS, TOKENIZER = "weights.safetensors", "config.json", "item_ids.json", "tokenizer"


def save_scorer(model: InstructRecScorer, tokenizer: BertTokenizerFast, item_ids: list[str], target: Path) -> Path:
    """Self-contained directory: config + weights + tokenizer + catalogue ids."""
    with atomic_dir(target) as tmp:
        (tmp / CONFIG).write_text(json.dumps(asdict(model.config), indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        tokenizer.save_pretrained(str(tmp / TOKENIZER))
        (tmp / ITEMS).write_text(json.dumps(item_ids))
    return target


def load_scorer(path: Path, device: str = "cpu") -> tuple[InstructRecScorer, BertTokenizerFast, list[str]]:
    config = ScorerConfig(**json.loads((path / CONFIG).read_text()))
    model = InstructRecScorer(config)
    model.load_state_dict(load_file(str(path / WEIGHTS), device=device))
    model.to(device).eval()
    tokenizer = BertTokenizerFast.from_pretrained(str(path / TOKENIZER), local_files_only=True)
    return model, tokenizer, json.loads((path / ITEMS).read_text())


def _like_dislike(
    logp: torch.Tensor,
    label: torch.Tensor,
    weight: torch.Tensor,
    dislike_weight: float,
    total: torch.Tensor | None = None,
) -> torch.Tensor:
    """Likes: cross-entropy -log p; dislikes: unlikelihood -log(1 - p); weighted mean.

    total: the weight the mean divides by, where it is not this batch's own (a data-parallel rank
    divides its part by the whole step's weight, so the ranks' gradients add up to the step's).
    """
    like = -logp
    dislike = -torch.log1p(-logp.exp().clamp(max=1 - 1e-6)) * dislike_weight
    loss = torch.where(label > 0, like, dislike) * weight
    return loss.sum() / (weight.sum() if total is None else total).clamp(min=1e-6)


def bf16_capable(device: torch.device) -> bool:
    """Whether bf16 products run on dedicated units here (AVX512-BF16/AMX CPUs, Ampere+ GPUs), i.e. pay off."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast for training where `enabled` and the hardware has bf16 units; fp32 otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and bf16_capable(device))


class _CatalogueLogProb(torch.autograd.Function):
    """log p(target) under a softmax over the whole catalogue, a chunk of rows at a time.

    Never holds the [rows, items] logits: the forward pass keeps each row's log-sum-exp, the backward
    pass recomputes a chunk's logits and turns them into its gradient in place (softmax minus one-hot),
    so each chunk stays in cache. Products run in `dtype` (bf16 where the hardware has bf16 units),
    softmax and accumulation in fp32. `bench/training.py` measures it against log_softmax + gather.
    """

    @staticmethod
    def forward(ctx, query, items, bias, target, dtype, chunk):
        q, w = query.detach().to(dtype), items.detach().to(dtype)
        b = bias.detach().float()
        lse = torch.empty(len(q), dtype=torch.float32, device=q.device)
        out = torch.empty_like(lse)
        for s in range(0, len(q), chunk):
            logits = (q[s : s + chunk] @ w.T).float().add_(b)
            lse[s : s + chunk] = torch.logsumexp(logits, 1)
            out[s : s + chunk] = logits.gather(1, target[s : s + chunk, None]).squeeze(1) - lse[s : s + chunk]
        ctx.save_for_backward(q, w, b, target, lse)
        ctx.chunk, ctx.dtypes = chunk, (query.dtype, items.dtype, bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, w, b, target, lse = ctx.saved_tensors
        grad_q = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=q.device)
        grad_b = torch.zeros_like(b)
        for s in range(0, len(q), ctx.chunk):
            rows, g = q[s : s + ctx.chunk], grad[s : s + ctx.chunk, None].float()
            # d log p_t / d logits = onehot_t - softmax; times the incoming gradient
            d = (rows @ w.T).float().add_(b).sub_(lse[s : s + ctx.chunk, None]).exp_().mul_(-g)
            d.scatter_add_(1, target[s : s + ctx.chunk, None], g)
            grad_b += d.sum(0)
            d = d.to(q.dtype)
            grad_q[s : s + ctx.chunk] = (d @ w).float()
            grad_w += (d.T @ rows).float()
        dq, dw, db = ctx.dtypes
        return grad_q.to(dq), grad_w.to(dw), grad_b.to(db), None, None, None


def catalogue_log_prob(
    query: torch.Tensor,
    items: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    low_precision: bool = False,
) -> torch.Tensor:
    """[N] log-softmax of each query's target (0-based column of items [n, dim]) against every item.

    low_precision: products in bf16 (fp32 softmax), for mixed-precision training.
    """
    bias = torch.zeros(len(items), device=items.device) if bias is None else bias
    dtype = torch.bfloat16 if low_precision else torch.float32
    chunk = 256 if query.device.type == "cpu" else 8192
    return _CatalogueLogProb.apply(query, items, bias, target, dtype, chunk)


def full_softmax_loss(
    model: InstructRecScorer,
    query: torch.Tensor,
    target: torch.Tensor,
    label: torch.Tensor,
    weight: torch.Tensor,
    items: torch.Tensor,
    dislike_weight: float = 1.0,
    low_precision: bool = False,
    total: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the whole catalogue: exact, and cheap while the catalogue has thousands of items."""
    logp = catalogue_log_prob(query, items[1:], target - 1, model.item_bias[1:], low_precision)
    return _like_dislike(logp, label, weight, dislike_weight, total)


def sampled_softmax_loss(
    model: InstructRecScorer,
    query: torch.Tensor,
    target: torch.Tensor,
    label: torch.Tensor,
    weight: torch.Tensor,
    negatives: torch.Tensor,
    items: torch.Tensor,
    dislike_weight: float = 1.0,
    log_q: torch.Tensor | None = None,
    total: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over in-batch targets + shared uniform negatives (a data-parallel rank: its own shard's targets).

    Likes (label > 0) pull the item toward the instruction (cross-entropy);
    dislikes push it away with the unlikelihood term -log(1 - p(item)).
    Accidental hits (a row's own target among other columns) are masked.
    `log_q` [n_items + 1] is the log expected count of each item among the
    candidates; subtracting it (the sampled-softmax correction) keeps in-batch
    negatives, drawn by popularity, from erasing the popularity prior.
    """
    cand = torch.cat([target, negatives])
    logits = query @ items[cand].T + model.item_bias[cand]
    if log_q is not None:
        logits = logits - log_q[cand]
    rows = torch.arange(len(target), device=target.device)
    clash = cand.unsqueeze(0) == target.unsqueeze(1)
    clash[rows, rows] = False
    logits = logits.float().masked_fill(clash, float("-inf"))
    logp = F.log_softmax(logits, dim=-1)[rows, rows]
    return _like_dislike(logp, label, weight, dislike_weight, total)
