"""Every optimised variant against PyTorch on the tiny model, and the serving choice rule."""

import numpy as np
import pytest

from instructrec.evaluation.evaluate import TorchScorer
from instructrec.serving import optimize
from instructrec.serving.export import OnnxScorer, cuda_usable, export_onnx, make_session
from instructrec.serving.optimize import VariantReport, check_variant, choose_for_serving, serving_choices
from instructrec.serving.parity import Parity, parity
from tests.model.conftest import build_model


@pytest.fixture(scope="module")
def variants(tiny_cfg, prepared, tmp_path_factory):
    model, tok = build_model(tiny_cfg, prepared)
    model.eval()
    out = tmp_path_factory.mktemp("variants")
    bert = model.bert.config
    paths, stats = optimize.build_variants(
        export_onnx(model, tok, out / "model.onnx"), out / "v", bert.num_attention_heads, bert.hidden_size
    )
    return model, tok, paths, stats


def inputs(prepared):
    texts = [t for c in prepared.test_cases.values() for t in c.texts[:12]]
    return texts, np.concatenate([c.history[:12] for c in prepared.test_cases.values()])


def test_each_host_gets_the_bert_fusions_that_pay_there(variants):
    model, _, _, stats = variants
    layers = model.bert.config.num_hidden_layers
    gpu, cpu = stats["fp16"], stats["fused"]
    assert gpu["Attention"] == layers and gpu["SkipLayerNormalization"] >= 2 * layers - 1 and gpu["BiasGelu"] >= layers
    assert cpu["Attention"] == layers and cpu["Gelu"] >= layers and cpu["LayerNormalization"] >= 2 * layers
    # ... and not the fusions whose CPU kernels are slower than what they replace
    assert not {"SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"} & set(cpu)


@pytest.mark.parametrize("name,tolerance", [("fp32", 1e-4), ("fused", 1e-4), ("int8", 0.25)])
def test_cpu_variants_match_pytorch(variants, prepared, name, tolerance):
    model, tok, paths, _ = variants
    ids = prepared.catalogue.item_ids
    texts, hist = inputs(prepared)
    eager = TorchScorer("t", model, tok, ids, ids).score(texts, hist)
    onnx = OnnxScorer(name, make_session(paths[name]), tok, model.config.max_text_tokens).score(texts, hist)
    p = parity(eager, onnx)
    assert p.max_abs_diff < tolerance
    assert p.top10_overlap >= (0.9 if name == "int8" else 1.0)


def _batched_and_alone(variants, prepared, name):
    _, tok, paths, _ = variants
    scorer = OnnxScorer(name, make_session(paths[name]), tok, 64)
    texts, hist = inputs(prepared)
    together = scorer.score(texts, hist)  # one call, padded to the longest text
    alone = np.concatenate([scorer.score([t], h[None]) for t, h in zip(texts, hist, strict=True)])
    return together, alone


@pytest.mark.parametrize("name", ["fp32", "fused"])
def test_row_independent_variants_score_a_row_the_same_in_any_batch(variants, prepared, name):
    """What the service's micro-batching relies on (instructrec.serving.batching)."""
    together, alone = _batched_and_alone(variants, prepared, name)
    p = parity(alone, together)
    assert p.max_abs_diff < 1e-4 and p.top10_overlap == 1.0


def test_int8_rows_depend_on_their_batch_mates(variants, prepared):
    """Why a batching service never serves int8: one activation scale per call, taken from the whole batch."""
    together, alone = _batched_and_alone(variants, prepared, "int8")
    assert parity(alone, together).max_abs_diff > 1e-3


def test_int8_quantises_every_encoder_weight_product_and_nothing_else(variants):
    import onnx

    model, _, paths, _ = variants
    layers = model.bert.config.num_hidden_layers
    nodes = onnx.load(str(paths["int8"])).graph.node
    ops = [n.op_type for n in nodes]
    integer = [n for n in nodes if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    float_mm = [n.name for n in nodes if n.op_type == "MatMul"]
    assert ops.count("QAttention") == layers and "Attention" not in ops  # int8 Q, K, V in one kernel per layer
    assert len(integer) == 3 * layers  # attention output, intermediate, output dense
    assert not [name for name in float_mm if "/bert/" in name]  # every encoder weight product is int8
    assert any(name.startswith("/encoder/blocks.") for name in float_mm)  # the history transformer stays fp32


def test_fp16_stores_the_weights_in_half_precision_and_keeps_the_interface(variants):
    """Where no GPU runs it, the fp16 graph is checked as data: its weights are the fp32 graph's rounded to half
    precision, and its inputs and outputs are the fp32 graph's (int64 ids, fp32 scores), so callers do not change."""
    import onnx
    from onnx import numpy_helper

    _, _, paths, _ = variants
    half, full = onnx.load(str(paths["fp16"])), onnx.load(str(paths["fp32"]))

    def interface(graph):
        return [(v.name, v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output]]

    assert interface(half.graph) == interface(full.graph)
    weights = {w.name: numpy_helper.to_array(w) for w in half.graph.initializer}
    floats = {n: w for n, w in weights.items() if w.dtype.kind == "f"}
    halves = sum(w.nbytes for w in floats.values() if w.dtype == np.float16)
    assert halves / sum(w.nbytes for w in floats.values()) > 0.9
    reference = {w.name: numpy_helper.to_array(w) for w in full.graph.initializer}
    shared = [
        n for n, w in floats.items() if w.dtype == np.float16 and n in reference and reference[n].shape == w.shape
    ]
    assert len(shared) >= 5, "the fp16 graph keeps the names of the weights it converted"
    for name in shared:
        assert np.allclose(floats[name].astype(np.float32), reference[name], rtol=1e-3, atol=1e-4), name
    assert paths["fp16"].stat().st_size < 0.7 * paths["fused"].stat().st_size


@pytest.mark.skipif(not cuda_usable(), reason="fp16 runs on a GPU (CUDA) only")
def test_fp16_matches_pytorch_on_gpu(variants, prepared):
    model, tok, paths, _ = variants
    ids = prepared.catalogue.item_ids
    texts, hist = inputs(prepared)
    session = make_session(paths["fp16"])
    assert session.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    p = parity(
        TorchScorer("t", model, tok, ids, ids).score(texts, hist),
        OnnxScorer("fp16", session, tok, model.config.max_text_tokens).score(texts, hist),
    )
    assert p.max_abs_diff < 0.05 and p.top10_overlap >= 0.95


def report(name, loss, provider="CPUExecutionProvider"):
    return VariantReport(name, "x", 1.0, provider, relative_loss=loss, eligible=provider is not None and loss <= 0.01)


def test_variant_losing_more_than_one_percent_is_never_served():
    reports = {
        "fp32": report("fp32", 0.0),
        "fused": report("fused", 0.0),
        "int8": report("int8", 0.02),
        "fp16": report("fp16", 0.0, provider=None),
    }
    assert choose_for_serving(reports, "cpu") == "fused"  # int8 too lossy: the CPU-fused fp32 graph is next
    assert choose_for_serving(reports, "cuda") == "fused"  # fp16 unverified here
    reports["int8"] = report("int8", 0.005)
    assert choose_for_serving(reports, "cpu") == "int8"
    reports["int8"], reports["fused"] = report("int8", 0.02), report("fused", 0.03)
    assert choose_for_serving(reports, "cpu") == "fp32"  # the plain graph when nothing faster is eligible


def test_a_batching_service_never_gets_int8():
    """int8 quantises a call's activations with one scale: batched, a row's scores would follow its batch-mates."""
    reports = {"fp32": report("fp32", 0.0), "fused": report("fused", 0.0), "int8": report("int8", 0.0)}
    chosen = serving_choices(reports)
    assert chosen == {"cpu": "int8", "cuda": "fused", "cpu-batched": "fused", "cuda-batched": "fused"}
    reports["fused"] = report("fused", 0.03)
    assert serving_choices(reports)["cpu-batched"] == "fp32"


def test_check_variant_measures_and_applies_the_limit(tmp_path):
    f = tmp_path / "v.onnx"
    f.write_bytes(b"0" * 1024)
    good = check_variant("int8", f, "CPUExecutionProvider", lambda: Parity(0.1, 0.95), lambda: 0.2972, 0.300, 0.01)
    bad = check_variant("int8", f, "CPUExecutionProvider", lambda: Parity(0.1, 0.95), lambda: 0.290, 0.300, 0.01)
    unrunnable = check_variant("fp16", f, None, lambda: 1 / 0, lambda: 1 / 0, 0.300, 0.01)
    assert good.eligible and good.relative_loss == pytest.approx(0.0093, abs=1e-4)
    assert not bad.eligible and "beyond" in bad.reason
    assert not unrunnable.eligible and "GPU" in unrunnable.reason
