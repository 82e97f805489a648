"""bench/gpu_check.py runs where the lent GPU machine's Python runs: torch, numpy, transformers and onnxruntime,
without polars, pydantic, Prefect, MLflow, GX or Ray. Here: a CPU smoke run with those imports refused, and the
script's full shapes checked against the config they stand for."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from instructrec.config import load_config
from instructrec.models.backbone import minilm_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
ABSENT_THERE = ("polars", "pydantic", "prefect", "mlflow", "great_expectations", "ray")


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_smoke_run_works_without_the_packages_the_gpu_host_lacks(tmp_path):
    runner = textwrap.dedent(f"""
        import importlib.abc, runpy, sys
        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {ABSENT_THERE!r}:
                    raise ImportError(f"{{name}} is not installed on the GPU host")
        sys.meta_path.insert(0, Absent())
        sys.argv = [{str(SCRIPT)!r}, "--smoke", "--out", {str(tmp_path / "out.json")!r}]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    out = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    for model in ("sasrec", "scorer"):
        t = report["training"][model]
        assert t["examples_per_s"] > 0 and t["gflops_per_example"] > 0 and 0 < t["mfu_vs_measured_peak"] < 1
        assert abs(sum(t["share_of_step"].values()) - 1) < 1e-6
    onnx = report["onnx"]
    assert onnx["providers"]["fp32_cpu"][0] == "CPUExecutionProvider"
    parity = onnx["parity"]["fp32_cpu_vs_torch"]  # the exported graph scores as the model does
    assert parity["max_abs_diff"] < 1e-3 and parity["top10_overlap"] == 1.0
    assert set(onnx["rows_per_s"]["fp32_cpu"]) == {"1", "32", "256"}
    assert "| scorer |" in out.stdout and "parity fp32_cpu_vs_torch" in out.stdout


def test_the_full_shapes_are_ml_1m_on_the_gpu_profile():
    shape = _load_script().Shape()
    cfg = load_config("gpu", data="movielens-1m")
    assert (shape.history, shape.dim, shape.n_layers, shape.n_heads) == (
        cfg.data.max_history,
        cfg.model.dim,
        cfg.model.n_layers,
        cfg.model.n_heads,
    )
    assert (shape.scorer_batch, shape.sasrec_batch) == (cfg.train.batch_size, cfg.baseline.batch_size)
    assert cfg.model.train_bert and shape.text_tokens <= cfg.model.max_text_tokens
    bert = json.loads((minilm_dir() / "config.json").read_text())
    assert dict(shape.bert) == {k: bert[k] for k in dict(shape.bert)}  # the backbone the gpu profile tunes
