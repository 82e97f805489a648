"""Optimised ONNX variants of the exported scorer, and which one a host serves.

From the plain fp32 export:
  fused  fp32 graph with the ONNX Runtime BERT fusions that pay on CPU (attention,
         layer norm, GELU);
  fp16   the graph with every BERT fusion (attention, skip layer norm, embedding layer
         norm, bias GELU) in half precision, inputs/outputs kept int64/fp32 (GPU only);
  int8   dynamic quantisation of the fused graph's encoder weights (CPU): QAttention
         for the attention blocks, integer MatMuls for the dense layers.
Each variant is checked against PyTorch (parity) and on the validation split
(NDCG@10); one that loses more than `max_relative_loss` is never served.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from instructrec.io import atomic_path
from instructrec.serving.parity import Parity

FP32, FUSED, FP16, INT8 = "fp32", "fused", "fp16", "int8"
# fastest first, per host kind; a variant missing from a host's list never serves there
SERVING_PREFERENCE = {"cpu": (INT8, FUSED, FP32), "cuda": (FP16, FUSED, FP32)}
# the same for a service that batches requests (instructrec.serving.batching): int8 quantises activations with
# one scale per call, so a row's scores would depend on its batch-mates; the others are row-independent
BATCHED_PREFERENCE = {host: tuple(v for v in names if v != INT8) for host, names in SERVING_PREFERENCE.items()}
NEEDS_GPU = {FP16}
# Fusions whose contrib CPU kernels are slower than the ops they replace (ORT 1.31, 2 cores, batch 256:
# the fully fused graph ran 0.88x the attention-only one; SkipLayerNormalization alone took 13% of the
# time). GPU graphs keep them all; export.make_session also turns their session-time passes off on CPU.
CPU_SLOW_FUSIONS = (
    "enable_skip_layer_norm",
    "enable_bias_skip_layer_norm",
    "enable_embed_layer_norm",
    "enable_bias_gelu",
)


def _save(model: onnx.ModelProto, target: Path) -> Path:
    """Atomic; ORT's saver also declares the com.microsoft opset its fused operators need."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    with atomic_path(target) as tmp:
        OnnxModel.save(model, str(tmp))
    return target


def fuse(fp32: Path, target: Path, num_heads: int, hidden_size: int, host: str = "cuda") -> tuple[Path, dict[str, int]]:
    """BERT fusions by ORT's transformer optimizer, the set that pays on `host`; returns the fused-operator counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    for name in CPU_SLOW_FUSIONS if host == "cpu" else ():
        setattr(options, name, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(
            str(fp32),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
        )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    return _save(opt.model, target), stats


def to_fp16(fused: Path, target: Path) -> Path:
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fused)))
    model.convert_float_to_float16(keep_io_types=True)
    return _save(model.model, target)


def quantize_int8(fused: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of BERT's weights (activations quantised per call).

    The base is the CPU-fused graph: its Attention ops become QAttention (int8
    QKV product, softmax inside one kernel), ~6% faster than int8 over the
    unfused attention's transposes and softmax, at equal parity.

    Only the encoder's weight products are quantised: they hold nearly all the
    FLOPs. The small history transformer, the fusion head and the item-scoring
    product stay fp32, where int8 rounding would move scores most for the
    least time saved.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fused), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    encoder = [
        n.name
        for n in graph.node
        if any(i in weights for i in n.input)
        and (n.op_type == "Attention" or (n.op_type == "MatMul" and "/bert/" in n.name))
    ]
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fused),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=encoder,
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return target


def build_variants(
    fp32: Path, out_dir: Path, num_heads: int, hidden_size: int
) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """Every variant beside `fp32`; also the fused-operator counts of the CPU and GPU graphs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fused, cpu_ops = fuse(fp32, out_dir / "fused.onnx", num_heads, hidden_size, host="cpu")
    fused_gpu, gpu_ops = fuse(fp32, out_dir / "fused-gpu.onnx", num_heads, hidden_size, host="cuda")
    paths = {
        FP32: fp32,
        FUSED: fused,
        INT8: quantize_int8(fused, out_dir / "int8.onnx"),
        FP16: to_fp16(fused_gpu, out_dir / "fp16.onnx"),
    }
    return paths, {FUSED: cpu_ops, FP16: gpu_ops}


@dataclass
class VariantReport:
    name: str
    path: str
    size_mb: float
    provider: str | None  # None: not runnable on this host (fp16 without a GPU)
    max_abs_diff: float | None = None
    top10_overlap: float | None = None
    valid_ndcg10: float | None = None
    relative_loss: float | None = None  # vs PyTorch on the validation split
    eligible: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_variant(
    name: str,
    path: Path,
    provider: str | None,
    parity: Callable[[], Parity],
    valid_ndcg: Callable[[], float],
    reference_ndcg: float,
    max_relative_loss: float,
) -> VariantReport:
    """Parity and validation NDCG@10 of one variant; the serving eligibility rule lives here."""
    report = VariantReport(name, str(path), path.stat().st_size / 2**20, provider)
    if provider is None:
        report.reason = "needs a GPU: not measured on this host, not served"
        return report
    p = parity()
    report.max_abs_diff, report.top10_overlap = p.max_abs_diff, p.top10_overlap
    report.valid_ndcg10 = valid_ndcg()
    report.relative_loss = (reference_ndcg - report.valid_ndcg10) / reference_ndcg if reference_ndcg > 0 else 0.0
    report.eligible = report.relative_loss <= max_relative_loss
    report.reason = (
        f"loses {report.relative_loss:+.2%} validation NDCG@10 vs PyTorch "
        f"({'within' if report.eligible else 'beyond'} the {max_relative_loss:.0%} limit)"
    )
    return report


def batched(host: str) -> str:
    """The bundle manifest's key for the variant a batching service serves on `host`."""
    return f"{host}-batched"


def serving_choices(reports: dict[str, VariantReport]) -> dict[str, str]:
    """What each host kind serves, alone and batched: {'cpu': .., 'cuda': .., 'cpu-batched': .., 'cuda-batched': ..}."""
    alone = {host: choose_for_serving(reports, host, SERVING_PREFERENCE) for host in SERVING_PREFERENCE}
    return alone | {batched(h): choose_for_serving(reports, h, BATCHED_PREFERENCE) for h in BATCHED_PREFERENCE}


def choose_for_serving(
    reports: dict[str, VariantReport], host: str, preference: dict[str, tuple[str, ...]] = SERVING_PREFERENCE
) -> str:
    """The fastest eligible variant for `host` ('cpu' or 'cuda'); fp32 is the last resort."""
    for name in preference[host]:
        if name in reports and reports[name].eligible:
            return name
    return FP32
