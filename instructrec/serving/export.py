"""ONNX export of the scorer, parity against PyTorch, and ORT sessions.

The graph takes the instruction's tokens and its history item ids and
returns a score for every catalogue item; item vectors are baked in as
constants at export time (computed once per catalogue).
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instructrec.io import atomic_path
from instructrec.models.model import InstructRecScorer

INPUTS = ("input_ids", "attention_mask", "history")
OUTPUT = "scores"
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
WITH_TENSORRT = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class _Exported(torch.nn.Module):
    """Freezes item vectors into the graph: serving costs one encoder pass + one matmul."""

    items: torch.Tensor

    def __init__(self, model: InstructRecScorer):
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("items", model.item_vectors().detach().clone())

    def forward(self, input_ids, attention_mask, history):
        q = self.model.query(self.model.encode_text(input_ids, attention_mask), history, self.items)
        return self.model.scores(q, self.items)


def export_onnx(model: InstructRecScorer, tokenizer, target: Path, opset: int = 17) -> Path:
    """The scorer as one ONNX graph (tokens + history -> scores over the whole catalogue, item tower folded in),
    dynamic in batch and token length, written atomically; the caller's model is left untouched."""
    model = copy.deepcopy(model).eval().cpu()  # the caller's model stays on its device
    sample = model.tokenize(tokenizer, ["an example instruction", "a second, longer example instruction text"])
    history = torch.zeros(2, model.config.max_history, dtype=torch.long)
    history[0, -2:] = torch.tensor([1, 2])
    return export_graph(model, sample["input_ids"], sample["attention_mask"], history, target, opset)


def export_graph(
    model: InstructRecScorer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    history: torch.Tensor,
    target: Path,
    opset: int = 17,
) -> Path:
    """`export_onnx` from sample inputs instead of a tokenizer (a model in eval mode, on the CPU)."""
    with atomic_path(target) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Exported(model).eval(),  # the exporter restores the wrapper's mode afterwards, onto the model too
            (input_ids, attention_mask, history),
            str(tmp),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "history": {0: "batch"},
                OUTPUT: {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    return target


# Rows per ORT call when a request is split by length. On CPU, 32 rows (~600 tokens) keep the
# activations in L2 while GEMMs stay efficient: +6% (fp32) / +8% (int8) over 64, bench/scorer.py
# sweeps it. A GPU wants large calls.
CPU_MICRO_BATCH, GPU_MICRO_BATCH = 32, 256
# ORT's session-time fusions with slower CPU kernels (see optimize.CPU_SLOW_FUSIONS): int8 +12% without
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion", "BiasGeluFusion", "EmbedLayerNormFusion")


@dataclass(frozen=True)
class Session:
    session: Any  # onnxruntime.InferenceSession (imported lazily: importing the library stays cheap)
    provider: str  # the provider actually running the graph

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    @property
    def micro_batch(self) -> int:
        return GPU_MICRO_BATCH if self.on_gpu else CPU_MICRO_BATCH

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, history: np.ndarray) -> np.ndarray:
        feeds = {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": attention_mask.astype(np.int64),
            "history": history.astype(np.int64),
        }
        if not self.on_gpu:
            return self.session.run([OUTPUT], feeds)[0]
        # IOBinding: inputs copied to the device once, the output allocated there, one copy back
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output(OUTPUT, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def cuda_usable() -> bool:
    """Whether torch sees a GPU (ONNX Runtime's CUDA provider is checked separately, at session creation)."""
    return torch.cuda.is_available()


def provider_options(provider: str, cache_dir: Path | None) -> dict:
    """Per-provider ONNX Runtime options: fp16 and an engine cache for TensorRT, device and cuDNN search for CUDA."""
    if provider == "TensorrtExecutionProvider":
        options: dict[str, object] = {"trt_fp16_enable": True}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        return options
    if provider == "CUDAExecutionProvider":
        return {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}
    return {}


def make_session(
    path: Path,
    prefer: tuple[str, ...] = PREFERRED_PROVIDERS,
    threads: int | None = None,
    engine_cache: Path | None = None,
    spinning: bool = True,
) -> Session:
    """Prefer the GPU where one is really there; report the provider that runs.

    onnxruntime-gpu lists CUDA even on hosts without a GPU and then silently
    falls back, so GPU providers are only asked for when torch sees a GPU,
    and the answer comes from `get_providers()`, not from what was asked.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [p for p in prefer if p in available and (p not in GPU_PROVIDERS or cuda_usable())]
    on_gpu = any(p in GPU_PROVIDERS for p in wanted)
    if on_gpu and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:  # idle threads sleep at once instead of busy-waiting for the next call
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [(p, provider_options(p, engine_cache)) for p in wanted] or ["CPUExecutionProvider"]
    session = ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=providers,
        disabled_optimizers=None if on_gpu else list(CPU_DISABLED_OPTIMIZERS),
    )
    return Session(session, session.get_providers()[0])


def length_buckets(lengths: np.ndarray, size: int) -> list[np.ndarray]:
    """Row groups of similar length: large batches waste less on padding and stay in cache."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + size] for i in range(0, len(order), size)]


class OnnxScorer:
    """Scores through an ORT session; same interface as evaluate.TorchScorer."""

    def __init__(self, name: str, session: Session, tokenizer, max_text_tokens: int, micro_batch: int | None = None):
        self.name, self.session, self.tokenizer, self.max_text_tokens = name, session, tokenizer, max_text_tokens
        self.micro_batch = micro_batch or session.micro_batch
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer raises "Already borrowed" when shared by threads

    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray:
        with self._tokenizer_lock:
            enc = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="np"
            )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if len(texts) <= self.micro_batch:
            return self.session.run(ids, mask, history)
        lengths = mask.sum(1)
        out = None
        for rows in length_buckets(lengths, self.micro_batch):
            width = int(lengths[rows].max())
            part = self.session.run(ids[rows, :width], mask[rows, :width], history[rows])
            out = np.empty((len(texts), part.shape[1]), dtype=part.dtype) if out is None else out
            out[rows] = part
        assert out is not None  # texts is longer than one micro-batch, so at least one bucket ran
        return out


def latency_ms(scorer: OnnxScorer, text: str, history: np.ndarray, repeats: int = 30) -> float:
    """Median single-request latency (batch 1), after one warm-up call."""
    scorer.score([text], history[None])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.score([text], history[None])
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))
