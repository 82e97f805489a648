"""The GPU check: what this project's models cost to train and how its exported scorer runs, on a host that has
only torch, numpy, transformers and onnxruntime(-gpu) (no polars, pydantic, Prefect or MLflow: a bare GPU
machine where nothing can be installed). It imports the project's model code, nothing else of it.

    python bench/gpu_check.py --out results.json     # a GPU host: ML-1M's shapes; CUDA required, in torch and ORT
    python bench/gpu_check.py --smoke --out x.json   # anywhere (make test runs it on the CPU): small shapes

1. Training steps at ML-1M's shape (3,706 items, 200-item histories; the `gpu` profile's widths) for SASRec and
   the scorer (a MiniLM-L6-shaped BERT tuned end to end, random weights: the cost depends on shapes, not
   values): examples/s (target slots trained per second), model FLOPs per example (forward + backward, counted
   by torch's FLOP counter on one step), the time of each part of a step (data, forward, loss, backward,
   optimiser), and model FLOPs utilisation against the matmul peak measured here (bf16 and fp32) and, for a
   GPU it knows, the published dense peak.
2. The exported scorer under ONNX Runtime: on a GPU host the CUDA provider must come first in
   `get_providers()` (else it stops, saying so); the fp32 graph and its fp16 conversion; parity of each
   against the same fp32 graph on the CPU provider and against PyTorch; rows/s at batch 1, 32 and 256.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file, from any directory

from instructrec.models.model import InstructRecScorer, ScorerConfig, autocast, bf16_capable, catalogue_log_prob  # noqa: E402
from instructrec.models.sasrec import SASRec, SASRecConfig  # noqa: E402
from instructrec.serving.export import export_graph  # noqa: E402  (after the path)

# Published dense (no sparsity) peaks in TFLOP/s, bf16 and fp32 (vendor data sheets); matched on the device name.
PUBLISHED_PEAKS = {
    "H200": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),  # SXM
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "L4": (121.0, 30.3),
}
MINILM_L6 = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


@dataclass(frozen=True)
class Shape:
    """One run's shapes. `full` is ML-1M's on the `gpu` profile (instructrec/config.py: model, train, baseline
    and the movielens-1m preset); tests/unit/test_gpu_check.py checks the two agree."""

    n_items: int = 3706  # ML-1M's rated items
    history: int = 200  # the movielens-1m preset's max_history (disjoint windows)
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    scorer_batch: int = 256  # windows per step
    sasrec_batch: int = 128
    text_tokens: int = 32  # an instruction's length in word pieces (max_text_tokens is 64)
    texts_per_step: int = 1024  # unique instructions per step, each encoded by BERT once
    bert: tuple[tuple[str, int], ...] = tuple(MINILM_L6.items())
    steps: int = 10  # timed steps per model, after 3 warm-up steps
    ort_seconds: float = 3.0  # per throughput point


SMOKE = Shape(
    n_items=300,
    history=20,
    dim=32,
    n_layers=1,
    n_heads=2,
    scorer_batch=8,
    sasrec_batch=8,
    text_tokens=12,
    texts_per_step=16,
    bert=(("hidden_size", 32), ("num_hidden_layers", 1), ("num_attention_heads", 2), ("intermediate_size", 64)),
    steps=2,
    ort_seconds=0.2,
)
PARTS = ("data", "forward", "loss", "backward", "optimiser")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="small shapes, CPU allowed (a check that the script runs)")
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    args = p.parse_args(argv)
    shape = SMOKE if args.smoke else Shape()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("error: torch sees no CUDA device; on a CPU host run with --smoke", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    report: dict = {"host": host(device), "shape": asdict(shape), "peaks": peaks(device, args.smoke)}
    report["training"] = {
        "sasrec": time_steps("sasrec", sasrec_step(shape, device), shape.steps, device, report["peaks"]),
        "scorer": time_steps("scorer", scorer_step(shape, device), shape.steps, device, report["peaks"]),
    }
    report["onnx"] = onnx_check(shape, device, args.smoke)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nwritten to {args.out}")
    return 0


def host(device: torch.device) -> dict:
    import onnxruntime as ort
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers_available": ort.get_available_providers(),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["cuda"] = torch.version.cuda
    return out


# -- peaks ------------------------------------------------------------------------------------------------------
def peaks(device: torch.device, smoke: bool) -> dict:
    """Matmul TFLOP/s measured here (the best of square products), and the published peak where the GPU is known."""
    n = 256 if smoke else (8192 if device.type == "cuda" else 2048)
    out = {"measured_fp32": _matmul_tflops(device, torch.float32, n)}
    out["measured_bf16"] = _matmul_tflops(device, torch.bfloat16, n) if bf16_capable(device) else None
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else ""
    known = next((k for k in PUBLISHED_PEAKS if all(w in name for w in k.split())), None)
    if known:
        out["published"] = {"gpu": known, "bf16": PUBLISHED_PEAKS[known][0], "fp32": PUBLISHED_PEAKS[known][1]}
    return out


def _matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - start < 1.0:
        a @ b
        reps += 1
        if reps % 5 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- training steps ---------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One training step in parts: each callable takes the previous part's output."""

    model: torch.nn.Module
    optimiser: torch.optim.Optimizer
    data: object  # () -> batch
    forward: object  # batch -> (batch, outputs)
    loss: object  # (batch, outputs) -> (loss, examples)
    mixed_precision: bool


def sasrec_step(s: Shape, device: torch.device) -> Step:
    """SASRec+ as instructrec.models.sasrec trains it: full softmax over the catalogue at every real position."""
    model = SASRec(SASRecConfig(s.n_items, s.history, s.dim, s.n_layers, s.n_heads)).to(device)
    pool = _windows(s, s.sasrec_batch * 4)
    low = bf16_capable(device)

    def data():
        rows = torch.randint(0, len(pool), (s.sasrec_batch,))
        return pool[rows].to(device, non_blocking=True)

    def forward(w):
        with autocast(device, low):
            return w, model.states(w[:, :-1])

    def loss(w, states):
        targets = w[:, 1:]
        real = targets > 0
        logp = catalogue_log_prob(states[real], model.item.weight[1:], targets[real] - 1, low_precision=low)
        return -logp.mean(), int(real.sum())

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Step(model, opt, data, forward, loss, low)


def scorer_step(s: Shape, device: torch.device) -> Step:
    """The scorer as instructrec.training.train trains it with BERT tuned (the `gpu` profile): the batch's unique
    instructions through BERT, the causal history tower once per window, one query per real slot, full softmax
    over the catalogue, plus the history tower's own next-item loss (train.history_loss_weight 1)."""
    model = new_scorer(s).to(device)
    pool = _windows(s, s.scorer_batch * 4)
    low = bf16_capable(device)
    vocab = model.bert.config.vocab_size

    def data():
        rows = torch.randint(0, len(pool), (s.scorer_batch,))
        seq = pool[rows].to(device, non_blocking=True)
        ids = torch.randint(1000, vocab, (s.texts_per_step, s.text_tokens), device=device)
        slots = int((seq[:, 1:] > 0).sum())
        text_id = torch.randint(0, s.texts_per_step, (slots,), device=device)
        return seq, ids, text_id

    def forward(batch):
        seq, ids, text_id = batch
        inputs, at = seq[:, :-1], seq[:, 1:] > 0
        with autocast(device, low):
            items = model.item_vectors()
            states = model.history_states(inputs, items)
            text_vec = model.encode_text(ids, torch.ones_like(ids))[text_id]
            q = model.window_queries(text_vec, states, inputs, torch.ones_like(at), at)
        return batch, (items, states, q)

    def loss(batch, outputs):
        seq, _, _ = batch
        items, states, q = outputs
        at = seq[:, 1:] > 0
        target = seq[:, 1:][at] - 1
        words = catalogue_log_prob(q, items[1:], target, model.item_bias[1:], low)
        real = (seq[:, :-1] > 0) & at
        history = catalogue_log_prob(states[real], items[1:], seq[:, 1:][real] - 1, model.item_bias[1:], low)
        return -words.mean() - history.mean(), len(target)

    head = [p for n, p in model.named_parameters() if not n.startswith("bert.")]
    opt = torch.optim.AdamW([{"params": head, "lr": 1e-3}, {"params": model.bert.parameters(), "lr": 3e-5}])
    return Step(model, opt, data, forward, loss, low)


def new_scorer(s: Shape) -> InstructRecScorer:
    from transformers import BertConfig, BertModel  # pyright: ignore[reportAttributeAccessIssue]  (lazy module)

    bert = BertModel(BertConfig(**dict(s.bert), attn_implementation="eager"), add_pooling_layer=False)  # pyright: ignore[reportCallIssue]
    config = ScorerConfig(s.n_items, s.history, s.dim, s.n_layers, s.n_heads, max_text_tokens=64)
    model = InstructRecScorer(config, bert)
    with torch.no_grad():
        model.item_text.normal_()  # the item tower's frozen BERT features
    return model


def _windows(s: Shape, n: int) -> torch.Tensor:
    """[n, history + 1] item ids, every slot real (the most a step can cost), pinned for the copy to the GPU."""
    w = torch.randint(1, s.n_items + 1, (n, s.history + 1))
    return w.pin_memory() if torch.cuda.is_available() else w


def time_steps(name: str, step: Step, steps: int, device: torch.device, peak: dict) -> dict:
    step.model.train()
    flops = _step_flops(step)
    for _ in range(3):
        _run(step, device, None)
    parts = dict.fromkeys(PARTS, 0.0)
    examples = 0
    for _ in range(steps):
        examples += _run(step, device, parts)
    seconds = sum(parts.values())
    out = {
        "examples_per_s": examples / seconds,
        "steps_per_s": steps / seconds,
        "examples_per_step": examples / steps,
        "gflops_per_example": flops["flops"] / flops["examples"] / 1e9,
        "share_of_step": {k: v / seconds for k, v in parts.items()},
        "precision": "bf16 autocast" if step.mixed_precision else "fp32",
    }
    achieved = out["gflops_per_example"] * out["examples_per_s"] / 1e3  # TFLOP/s
    out["achieved_tflops"] = achieved
    measured = peak["measured_bf16"] if step.mixed_precision and peak["measured_bf16"] else peak["measured_fp32"]
    out["mfu_vs_measured_peak"] = achieved / measured
    if "published" in peak:
        out["mfu_vs_published_peak"] = achieved / peak["published"]["bf16" if step.mixed_precision else "fp32"]
    print(f"{name}: {out['examples_per_s']:,.0f} examples/s, {achieved:.3g} TFLOP/s", file=sys.stderr)
    return out


def _step_flops(step: Step) -> dict:
    """Forward + backward FLOPs of one step, counted from the shapes by torch (matmuls, convolutions, attention)."""
    counter = FlopCounterMode(display=False)
    batch = step.data()
    with counter:
        batch, outputs = step.forward(batch)
        loss, examples = step.loss(batch, outputs)
        loss.backward()
    step.optimiser.zero_grad(set_to_none=True)
    return {"flops": counter.get_total_flops(), "examples": examples}


def _run(step: Step, device: torch.device, parts: dict | None) -> int:
    marks = [time.perf_counter()]

    def mark() -> None:
        _sync(device)
        marks.append(time.perf_counter())

    batch = step.data()
    mark()
    batch, outputs = step.forward(batch)
    mark()
    loss, examples = step.loss(batch, outputs)
    mark()
    loss.backward()
    mark()
    step.optimiser.step()
    step.optimiser.zero_grad(set_to_none=True)
    mark()
    if parts is not None:
        for part, a, b in zip(PARTS, marks[:-1], marks[1:], strict=True):
            parts[part] += b - a
    return examples


# -- ONNX Runtime -----------------------------------------------------------------------------------------------
def onnx_check(s: Shape, device: torch.device, smoke: bool) -> dict:
    import onnxruntime as ort

    model = new_scorer(s).eval()
    vocab = model.bert.config.vocab_size
    ids, mask, history = _requests(s, vocab, 256)
    with tempfile.TemporaryDirectory() as tmp:
        sample = [torch.from_numpy(a[:2]) for a in (ids, mask, history)]
        fp32 = export_graph(model, *sample, Path(tmp) / "fp32.onnx")
        fp16 = _to_fp16(fp32, Path(tmp) / "fp16.onnx")
        gpu = device.type == "cuda"
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        sessions = {"fp32_cpu": _session(ort, fp32, ["CPUExecutionProvider"])}
        if gpu:  # the same graphs on the GPU, beside the CPU's
            sessions |= {"fp32": _session(ort, fp32, wanted), "fp16": _session(ort, fp16, wanted)}
        providers = {k: v.get_providers() for k, v in sessions.items()}
        if gpu and not all(providers[k][0] == "CUDAExecutionProvider" for k in ("fp32", "fp16")):
            raise SystemExit(
                f"error: ONNX Runtime runs the graph on {providers['fp32'][0]}, not CUDA (available: "
                f"{ort.get_available_providers()}); is onnxruntime-gpu installed, with CUDA and cuDNN it can load?"
            )
        with torch.no_grad():
            eager = model(torch.from_numpy(ids[:32]), torch.from_numpy(mask[:32]), torch.from_numpy(history[:32]))
        feed = {"input_ids": ids[:32], "attention_mask": mask[:32], "history": history[:32]}
        reference = sessions["fp32_cpu"].run(None, feed)[0]
        out: dict = {"providers": providers, "parity": {}, "rows_per_s": {}}
        out["parity"]["fp32_cpu_vs_torch"] = _agreement(eager.numpy(), reference)
        for name in [k for k in sessions if k != "fp32_cpu"]:
            out["parity"][f"{name}_{providers[name][0]}_vs_fp32_cpu"] = _agreement(
                reference, sessions[name].run(None, feed)[0].astype(np.float32)
            )
        for name, session in sessions.items():
            out["rows_per_s"][name] = {
                str(b): _throughput(session, ids, mask, history, b, s.ort_seconds) for b in (1, 32, 256)
            }
    if smoke and not gpu:
        out["fp16"] = "not run: ONNX Runtime's CPU provider has no fp16 kernels for most of the graph (a GPU runs it)"
    return out


def _requests(s: Shape, vocab: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Requests as the service sends them: texts right-padded to the longest, histories left-padded (0) with the
    most recent item last, of every length from 1 to the full window."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, vocab, (n, s.text_tokens), dtype=np.int64)
    mask = (np.arange(s.text_tokens) < rng.integers(4, s.text_tokens + 1, n)[:, None]).astype(np.int64)
    ids *= mask
    history = rng.integers(1, s.n_items + 1, (n, s.history), dtype=np.int64)
    history[np.arange(s.history) < s.history - rng.integers(1, s.history + 1, n)[:, None]] = 0
    return ids, mask, history


def _to_fp16(fp32: Path, target: Path) -> Path:
    """The fp32 graph with its weights and arithmetic in fp16, inputs and outputs kept (ORT's own converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(graph, str(target))
    return target


def _session(ort, path: Path, providers: list[str]):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def _agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict:
    """Largest absolute score difference and mean top-k overlap (what the gate's parity check compares)."""
    top_a, top_b = np.argsort(-a, axis=1)[:, :k], np.argsort(-b, axis=1)[:, :k]
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b, strict=True)])
    return {"max_abs_diff": float(np.max(np.abs(a - b))), "top10_overlap": float(overlap)}


def _throughput(session, ids, mask, history, batch: int, seconds: float) -> float:
    feed = {"input_ids": ids[:batch], "attention_mask": mask[:batch], "history": history[:batch]}
    session.run(None, feed)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        session.run(None, feed)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


# -- report -----------------------------------------------------------------------------------------------------
def print_report(r: dict) -> None:
    h, p = r["host"], r["peaks"]
    print(f"\n{h['device']} | torch {h['torch']} | onnxruntime {h['onnxruntime']} | {h['cpu_threads']} CPU threads")
    bf16 = f"{p['measured_bf16']:.3g}" if p["measured_bf16"] else "n/a"
    line = f"matmul peak measured: fp32 {p['measured_fp32']:.3g}, bf16 {bf16} TFLOP/s"
    if "published" in p:
        line += f"; published ({p['published']['gpu']}): bf16 {p['published']['bf16']}, fp32 {p['published']['fp32']}"
    print(line)
    print(
        "\n| model | precision | examples/s | GFLOP/example | TFLOP/s | MFU (measured peak) | MFU (published) | "
        + " | ".join(PARTS)
        + " |"
    )
    print("|---" * (6 + len(PARTS)) + "|")
    nothing = "n/a"
    for name, t in r["training"].items():
        shares = " | ".join(f"{t['share_of_step'][k]:.0%}" for k in PARTS)
        published = f"{t['mfu_vs_published_peak']:.1%}" if "mfu_vs_published_peak" in t else nothing
        print(
            f"| {name} | {t['precision']} | {t['examples_per_s']:,.0f} | {t['gflops_per_example']:.3g} | "
            f"{t['achieved_tflops']:.3g} | {t['mfu_vs_measured_peak']:.1%} | {published} | {shares} |"
        )
    o = r["onnx"]
    print(f"\nONNX Runtime providers: {o['providers']}")
    for name, agree in o["parity"].items():
        print(f"parity {name}: max |diff| {agree['max_abs_diff']:.2e}, top-10 overlap {agree['top10_overlap']:.3f}")
    print("\n| graph | batch 1 rows/s | batch 32 rows/s | batch 256 rows/s |\n|---|---|---|---|")
    for name, rates in o["rows_per_s"].items():
        print(f"| {name} | " + " | ".join(f"{rates[b]:,.0f}" for b in ("1", "32", "256")) + " |")
    if "fp16" in o:
        print(f"fp16: {o['fp16']}")


if __name__ == "__main__":
    raise SystemExit(main())
