"""Answering a request from an exported ONNX scorer (no PyTorch at serve time)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from transformers import BertTokenizerFast

from instructrec import schema
from instructrec.export import OnnxScorer, Session, cuda_usable, make_session
from instructrec.optimize import FP32
from instructrec.instructions import Instruction, free_text_instruction, make_instruction, pad_histories, render
from instructrec.split import Catalogue, chronological

BUNDLE_MANIFEST = "serving.json"
VARIANTS_DIR = "variants"
DEFAULT_REQUEST = "P1/I0"


def write_bundle(target: Path, tokenizer: BertTokenizerFast, catalogue: Catalogue, max_history: int,
                 max_text_tokens: int, snapshot_hash: str, serving: dict[str, str] | None = None,
                 variant_files: dict[str, Path] | None = None) -> Path:
    """Everything besides the registered fp32 graph that serving needs, the chosen faster variants included."""
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(target / "tokenizer"))
    for name, path in (variant_files or {}).items():
        (target / VARIANTS_DIR).mkdir(exist_ok=True)
        shutil.copyfile(path, target / VARIANTS_DIR / f"{name}.onnx")
    manifest = {"item_ids": catalogue.item_ids, "titles": catalogue.titles, "genres": [list(g) for g in catalogue.genres],
                "noun": catalogue.noun, "max_history": max_history, "max_text_tokens": max_text_tokens,
                "snapshot_hash": snapshot_hash, "serving": serving or {"cpu": FP32, "cuda": FP32}}
    (target / BUNDLE_MANIFEST).write_text(json.dumps(manifest))
    return target


def serving_graph(fp32_file: Path, bundle: Path) -> tuple[Path, str]:
    """(graph file, variant name) that this host should serve, per the bundle's checked choice."""
    host = "cuda" if cuda_usable() else "cpu"
    name = json.loads((bundle / BUNDLE_MANIFEST).read_text()).get("serving", {}).get(host, FP32)
    path = bundle / VARIANTS_DIR / f"{name}.onnx"
    return (path, name) if name != FP32 and path.exists() else (fp32_file, FP32)


@dataclass
class Recommender:
    session: Session
    tokenizer: BertTokenizerFast
    catalogue: Catalogue
    histories: dict[str, np.ndarray]  # user -> item indices in time order
    max_history: int
    max_text_tokens: int
    version: str = "?"
    variant: str = FP32

    def __post_init__(self) -> None:
        self.scorer = OnnxScorer(f"v{self.version}", self.session, self.tokenizer, self.max_text_tokens)

    @classmethod
    def load(cls, onnx_file: Path, bundle: Path, interactions: pl.DataFrame, version: str = "?") -> Recommender:
        m = json.loads((bundle / BUNDLE_MANIFEST).read_text())
        catalogue = Catalogue(m["item_ids"], m["titles"], [""] * len(m["item_ids"]), [tuple(g) for g in m["genres"]], m["noun"])
        tokenizer = BertTokenizerFast.from_pretrained(str(bundle / "tokenizer"), local_files_only=True)
        graph, variant = serving_graph(onnx_file, bundle)
        return cls(make_session(graph), tokenizer, catalogue, user_histories(interactions, catalogue),
                   m["max_history"], m["max_text_tokens"], version, variant)

    def request(self, history: np.ndarray, instruction: str | None = None) -> Instruction:
        """The user's own words beside their history; history alone; or a cold-start request."""
        if instruction:
            return free_text_instruction(instruction, history, self.max_history, self.catalogue)
        if len(history):
            return make_instruction(DEFAULT_REQUEST, 0, self.catalogue, history, None, self.max_history)
        return free_text_instruction(f"Recommend a popular {self.catalogue.noun}.", history, self.max_history, self.catalogue)

    def recommend(self, user_id: str, instruction: str | None = None, k: int = 10, exclude: Iterable[str] = ()) -> dict:
        """Top-k for the user, never an item of their history nor one in `exclude` (item ids already judged)."""
        if k < 1:
            raise ValueError("k must be at least 1")
        history = self.histories.get(str(user_id), np.zeros(0, dtype=np.int64))
        ins = self.request(history, instruction)
        scores = self.scorer.score([ins.text], pad_histories([ins.history], self.max_history))[0].astype(np.float64)
        scores[history - 1] = -np.inf  # never recommend what the user already has
        judged = [self.catalogue.index[i] for i in exclude if i in self.catalogue.index]
        scores[np.asarray(judged, dtype=np.int64) - 1] = -np.inf
        top = np.argsort(-scores, kind="stable")[: min(k, int(np.isfinite(scores).sum()))]
        return {
            "user_id": str(user_id),
            "known_user": bool(len(history)),
            "instruction": render(ins, self.catalogue),
            "instruction_type": ins.type,
            "model_version": self.version,
            "provider": self.session.provider,
            "variant": self.variant,
            "items": [{"rank": r + 1, "item_id": self.catalogue.item_ids[c], "title": self.catalogue.titles[c],
                       "score": round(float(scores[c]), 4)} for r, c in enumerate(top)],
        }


def top_k_all(rec: Recommender, k: int = 10, batch_size: int = 256) -> pl.DataFrame:
    """Top-k for every known user (history-only instruction), history excluded, in batches.

    Item vectors are constants of the graph, so each batch costs one encoder
    pass over its instructions plus one product with the catalogue.
    """
    users = sorted(rec.histories)
    k = min(k, rec.catalogue.n_items - 1)  # argpartition needs k < catalogue size
    scorer = rec.scorer
    rows: dict[str, list] = {"user_id": [], "rank": [], "item_id": [], "score": []}
    ids = np.asarray(rec.catalogue.item_ids)
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        requests = [rec.request(rec.histories[user]) for user in chunk]
        padded = pad_histories([ins.history for ins in requests], rec.max_history)
        scores = scorer.score([ins.text for ins in requests], padded).astype(np.float32)
        for r, user in enumerate(chunk):
            scores[r, rec.histories[user] - 1] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
        for r, user in enumerate(chunk):
            rows["user_id"] += [user] * k
            rows["rank"] += list(range(1, k + 1))
            rows["item_id"] += ids[order[r]].tolist()
            rows["score"] += scores[r, order[r]].tolist()
    return pl.DataFrame(rows, schema={"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String, "score": pl.Float32})


def user_histories(interactions: pl.DataFrame, catalogue: Catalogue) -> dict[str, np.ndarray]:
    known = interactions.filter(pl.col(schema.ITEM).is_in(pl.Series(catalogue.item_ids).implode()))
    grouped = (known.with_columns(pl.col(schema.ITEM).replace_strict(catalogue.index, return_dtype=pl.Int64).alias("idx"))
               .pipe(chronological).group_by(schema.USER, maintain_order=True).agg("idx"))
    return {u: np.asarray(s, dtype=np.int64) for u, s in zip(grouped[schema.USER], grouped["idx"].to_list(), strict=True)}
