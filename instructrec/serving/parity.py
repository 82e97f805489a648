"""How far an exported graph's scores are from PyTorch's: what the ONNX-parity check of the gate and the serving
eligibility of a variant both read. NumPy only, so the gate imports it without torch or onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top10_overlap: float


def parity(torch_scores: np.ndarray, onnx_scores: np.ndarray, k: int = 10) -> Parity:
    """The largest absolute difference and the mean overlap of the two top-k lists (what the gate's ONNX-parity
    check compares with its thresholds)."""
    diff = float(np.max(np.abs(torch_scores - onnx_scores)))
    top_t = np.argsort(-torch_scores, axis=1)[:, :k]
    top_o = np.argsort(-onnx_scores, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_t, top_o, strict=True)])
    return Parity(max_abs_diff=diff, top10_overlap=float(overlap))
