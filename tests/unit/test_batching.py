"""Micro-batching (instructrec.serving.batching): shared calls, each caller its own row, failures and retirement."""

import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from instructrec.config import ServeConfig
from instructrec.serving.batching import BatchPolicy, MicroBatcher
from instructrec.serving.recommend import BUNDLE_MANIFEST, VARIANTS_DIR, serving_graph


class Fatal(BaseException):
    """Not an Exception: what would otherwise end the worker thread without a word."""


class Recording:
    """A row scorer whose row r is [len(text_r), sum(history_r)]; records each call's size. A text 'boom' fails
    any call it is in (so a shared call, then its own); 'die' raises a BaseException."""

    def __init__(self, hold: threading.Event | None = None):
        self.sizes: list[int] = []
        self.hold, self.entered = hold, threading.Event()

    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray:
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(5)
        self.sizes.append(len(texts))
        if "die" in texts:
            raise Fatal("the worker's call ended abruptly")
        if "boom" in texts:
            raise RuntimeError("the graph failed")
        return np.stack([np.array([len(t), h.sum()], dtype=np.float32) for t, h in zip(texts, history, strict=True)])


def concurrently(batcher: MicroBatcher, requests: list[tuple[str, np.ndarray]]) -> list:
    """Each request from its own thread, all released together; a result or the exception raised. Fails (rather
    than hangs) when a caller is left waiting."""
    out: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def call(i: int) -> None:
        start.wait()
        try:
            out[i] = batcher.score(*requests[i])
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a caller was left waiting"
    return out


def test_each_caller_gets_its_own_row_from_shared_calls():
    scorer = Recording()
    batcher = MicroBatcher(scorer, BatchPolicy(max_rows=4, wait_ms=500))
    requests = [("x" * (i + 1), np.full(3, i)) for i in range(10)]
    out = concurrently(batcher, requests)
    for i, row in enumerate(out):
        np.testing.assert_array_equal(row, [i + 1, 3 * i])
    assert sum(scorer.sizes) == 10 and max(scorer.sizes) <= 4  # never more than max_rows in one call
    assert len(scorer.sizes) < 10 and batcher.mean_rows == 10 / len(scorer.sizes)


def test_a_lone_request_waits_the_wait_and_no_longer():
    scorer = Recording()
    batcher = MicroBatcher(scorer, BatchPolicy(max_rows=8, wait_ms=100))
    t0 = time.monotonic()
    np.testing.assert_array_equal(batcher.score("abc", np.ones(2)), [3, 2])
    assert 0.09 <= time.monotonic() - t0 < 2.0 and scorer.sizes == [1]


def test_requests_queued_during_a_call_share_the_next_one_without_waiting_again():
    hold = threading.Event()
    scorer = Recording(hold)
    batcher = MicroBatcher(scorer, BatchPolicy(max_rows=16, wait_ms=300))
    first = threading.Thread(target=batcher.score, args=("a", np.zeros(1)), daemon=True)
    first.start()
    assert scorer.entered.wait(5)  # the first call is inside the scorer, held there
    waiters = [threading.Thread(target=batcher.score, args=("b", np.zeros(1)), daemon=True) for _ in range(5)]
    for t in waiters:
        t.start()
    time.sleep(0.5)  # longer than the wait: the five are due as soon as the worker is free
    t0 = time.monotonic()
    hold.set()
    for t in [first, *waiters]:
        t.join(5)
    assert scorer.sizes == [1, 5] and time.monotonic() - t0 < 0.25


def test_a_failed_shared_call_fails_only_the_request_that_fails_alone():
    scorer = Recording()
    batcher = MicroBatcher(scorer, BatchPolicy(max_rows=8, wait_ms=500))
    boom, fine = concurrently(batcher, [("boom", np.zeros(1)), ("fine", np.ones(1))])
    assert isinstance(boom, RuntimeError)
    np.testing.assert_array_equal(fine, [4, 1])
    assert scorer.sizes == [2, 1, 1]  # the shared call, then each request alone
    np.testing.assert_array_equal(batcher.score("ok", np.ones(1)), [2, 1])  # the worker goes on


def test_a_worker_that_dies_leaves_no_caller_waiting_and_later_calls_score_alone():
    scorer = Recording()
    batcher = MicroBatcher(scorer, BatchPolicy(max_rows=8, wait_ms=300))
    out = concurrently(batcher, [("die", np.zeros(1)), ("x", np.zeros(1))])
    assert all(isinstance(r, Fatal) for r in out)
    batcher.join(5)
    assert not batcher.running
    np.testing.assert_array_equal(batcher.score("late", np.ones(1)), [4, 1])


def test_closing_answers_what_is_queued_and_later_calls_score_alone():
    hold = threading.Event()
    scorer = Recording(hold)
    batcher = MicroBatcher(scorer, BatchPolicy(max_rows=2, wait_ms=0))
    results: list = []
    callers = [
        threading.Thread(target=lambda: results.append(batcher.score("q", np.ones(1))), daemon=True) for _ in range(5)
    ]
    for t in callers:
        t.start()
    assert scorer.entered.wait(5)
    time.sleep(0.2)
    batcher.close()  # four still queued behind the held call
    hold.set()
    for t in callers:
        t.join(5)
    assert len(results) == 5 and sum(scorer.sizes) == 5
    batcher.join(5)
    assert not batcher.running
    np.testing.assert_array_equal(batcher.score("late", np.ones(1)), [4, 1])


def test_requests_racing_a_close_are_all_answered():
    for _ in range(20):
        batcher = MicroBatcher(Recording(), BatchPolicy(max_rows=4, wait_ms=1))
        closer = threading.Timer(0.001, batcher.close)
        closer.start()
        out = concurrently(batcher, [("r", np.ones(1))] * 12)
        assert all(isinstance(r, np.ndarray) for r in out)


def test_policy_from_config_and_its_limits():
    assert BatchPolicy.of(ServeConfig(batch_requests=1)) is None
    assert BatchPolicy.of(ServeConfig(batch_requests=8, batch_wait_ms=1.5)) == BatchPolicy(8, 1.5)
    with pytest.raises(ValueError, match="at least 2 rows"):
        BatchPolicy(max_rows=1)
    with pytest.raises(ValueError, match="wait_ms"):
        BatchPolicy(max_rows=2, wait_ms=-1)


def bundle_with(tmp_path: Path, serving: dict[str, str], variants: tuple[str, ...]) -> Path:
    (tmp_path / VARIANTS_DIR).mkdir(parents=True)
    for v in variants:
        (tmp_path / VARIANTS_DIR / f"{v}.onnx").write_bytes(b"graph")
    (tmp_path / BUNDLE_MANIFEST).write_text(json.dumps({"serving": serving}))
    return tmp_path


def test_batched_serving_takes_a_row_independent_graph(tmp_path):
    fp32 = tmp_path / "model.onnx"
    old = bundle_with(tmp_path / "old", {"cpu": "int8", "cuda": "int8"}, ("int8", "fused"))  # before the batched key
    assert serving_graph(fp32, old) == (old / VARIANTS_DIR / "int8.onnx", "int8")
    assert serving_graph(fp32, old, batched=True) == (old / VARIANTS_DIR / "fused.onnx", "fused")
    new = bundle_with(
        tmp_path / "new", {"cpu": "int8", "cuda": "int8", "cpu-batched": "fp32", "cuda-batched": "fp32"}, ("int8",)
    )
    assert serving_graph(fp32, new, batched=True) == (fp32, "fp32")
    only_int8 = bundle_with(tmp_path / "int8", {"cpu": "int8", "cuda": "int8"}, ("int8",))
    assert serving_graph(fp32, only_int8, batched=True) == (fp32, "fp32")


def test_the_capacity_benchmark_counts_a_rate_only_below_the_target_and_without_failures():
    spec = importlib.util.spec_from_file_location("capacity", Path(__file__).parents[2] / "bench" / "capacity.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def step(rate, p99, failed=0):
        return {"offered_per_s": rate, "p99_ms": p99, "failed": failed}

    assert bench.capacity([step(20, 12.0), step(40, 49.9), step(60, 50.0)], 50.0) == 40
    assert bench.capacity([step(20, 12.0), step(40, 20.0, failed=1)], 50.0) == 20  # a failed request disqualifies
    assert bench.capacity([step(20, 80.0)], 50.0) == 0.0


def test_an_operator_chosen_graph_must_have_shipped_and_be_able_to_batch(tmp_path):
    fp32 = tmp_path / "model.onnx"
    b = bundle_with(tmp_path / "b", {"cpu": "int8", "cuda": "int8"}, ("int8", "fused"))
    assert serving_graph(fp32, b, variant="fused") == (b / VARIANTS_DIR / "fused.onnx", "fused")
    assert serving_graph(fp32, b, batched=True, variant="fp32") == (fp32, "fp32")
    assert serving_graph(fp32, b, variant="int8") == (b / VARIANTS_DIR / "int8.onnx", "int8")
    with pytest.raises(ValueError, match="serve.variant=int8 cannot serve batched requests"):
        serving_graph(fp32, b, batched=True, variant="int8")
    with pytest.raises(ValueError, match="serve.variant=fp16: this model shipped fp32, fused, int8"):
        serving_graph(fp32, b, variant="fp16")
