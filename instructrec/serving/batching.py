"""Dynamic micro-batching: concurrent requests share ONNX Runtime calls.

Each request scores one instruction against the catalogue. Run alone, a call pays the graph's fixed costs
(the dispatch of every operator, a matrix product too thin to fill the cores) for one row; run together,
those costs are shared. As in Triton's dynamic batcher and Ray Serve's `@serve.batch`, one worker thread
takes the first request queued and whatever else arrives within `wait_ms` of that request's arrival (at
once when `max_rows` are queued), scores them in one call and hands each caller its row. Alone, a request
waits `wait_ms` at most; under load the queue fills while the previous call runs, and requests that waited
there for the worker go without waiting again.

A batch is only as exact as the graph is row-independent: a row's scores must not depend on its
batch-mates. The fp32 and fused graphs are, up to float rounding (the batch shape changes the kernels'
summation order: on the ML-100k champion, 4e-6 and 8e-6 at most on a score, every top-10 list the same;
tests/model/test_recommend.py and test_variants.py compare batched with alone). The int8 graph is not:
its activations are quantised with one scale per call, taken from the whole batch, so a batch-mate moves
every row's scores (on the same champion, 35 mixed requests scored together: 1 top-10 list in 35 kept).
fp16 quantises nothing, but has not been measured batched (no GPU here). Batched serving therefore takes
the host's best row-independent variant (optimize.BATCHED_PREFERENCE).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from instructrec.config import ServeConfig

log = logging.getLogger(__name__)


class RowScorer(Protocol):
    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class BatchPolicy:
    """How long a request may wait for batch-mates, and how many rows one call takes."""

    max_rows: int = 16
    wait_ms: float = 2.0

    @classmethod
    def of(cls, serve: ServeConfig) -> BatchPolicy | None:
        """From serve.batch_requests / batch_wait_ms; None when each request scores alone."""
        return cls(serve.batch_requests, serve.batch_wait_ms) if serve.batch_requests > 1 else None

    def __post_init__(self) -> None:
        if self.max_rows < 2:
            raise ValueError(f"a batch needs at least 2 rows (max_rows={self.max_rows}); 1 means no batching")
        if self.wait_ms < 0:
            raise ValueError(f"wait_ms must be >= 0, got {self.wait_ms}")


@dataclass
class _Pending:
    text: str
    history: np.ndarray
    arrived: float  # time.monotonic() when queued: its wait for batch-mates counts from here
    result: Future = field(default_factory=Future)


class MicroBatcher:
    """Scores single requests in shared calls; `score` blocks its caller until its row is ready.

    Every queued request is answered: a failed shared call is retried row by row (so one bad request fails
    alone), and a request that meets a closed batcher is scored alone on its caller's thread.
    """

    def __init__(self, scorer: RowScorer, policy: BatchPolicy, name: str = "scorer"):
        self.scorer, self.policy = scorer, policy
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # a request is queued before the stop mark or scored alone, never after it
        self._closed = False
        self.calls = self.rows = 0  # shared calls made, rows scored in them
        self._worker = threading.Thread(target=self._run, name=f"micro-batcher-{name}", daemon=True)
        self._worker.start()

    @property
    def mean_rows(self) -> float | None:
        return self.rows / self.calls if self.calls else None

    @property
    def running(self) -> bool:
        """Whether the worker still takes requests (False once closed and what was queued is answered)."""
        return self._worker.is_alive()

    def join(self, timeout: float) -> None:
        self._worker.join(timeout)

    def score(self, text: str, history: np.ndarray) -> np.ndarray:
        """[n_items] scores of one instruction, computed in a call shared with whatever is queued beside it."""
        pending = _Pending(text, history, time.monotonic())
        with self._lock:
            queued = not self._closed
            if queued:
                self._queue.put(pending)
        if not queued:  # a model retired while this request was in flight
            return self._alone(pending)
        return pending.result.result()

    def close(self) -> None:
        """Stop taking requests; those queued already are still answered, later ones score alone."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)  # the worker answers what is queued before it, then exits

    def _alone(self, p: _Pending) -> np.ndarray:
        return self.scorer.score([p.text], p.history[None])[0]

    def _run(self) -> None:
        batch: list[_Pending] = []
        try:
            while (first := self._queue.get()) is not None:
                batch, stop = self._collect(first)
                self._score(batch)
                if stop:
                    return
        except BaseException as exc:  # never leave a caller waiting on a worker that is gone
            log.exception("the micro-batcher stopped; requests now score alone")
            with self._lock:
                self._closed = True
            left = [p for p in batch if not p.result.done()]
            while not self._queue.empty():  # nothing is queued once _closed is set
                if (p := self._queue.get_nowait()) is not None:
                    left.append(p)
            for p in left:
                p.result.set_exception(exc)

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """`first` and what arrives within wait_ms of its arrival (or is queued already), up to max_rows;
        True when the stop mark was met."""
        batch, deadline = [first], first.arrived + self.policy.wait_ms / 1000.0
        while len(batch) < self.policy.max_rows:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _score(self, batch: list[_Pending]) -> None:
        try:
            scores = self.scorer.score([p.text for p in batch], np.stack([p.history for p in batch]))
            if len(scores) != len(batch):
                raise RuntimeError(f"the scorer returned {len(scores)} rows for {len(batch)} requests")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            log.warning("a shared call of %d requests failed (%s): each is scored alone", len(batch), exc)
            for p in batch:
                try:
                    p.result.set_result(self._alone(p))
                except Exception as alone_exc:  # this request's own failure, for its caller alone
                    p.result.set_exception(alone_exc)
            return
        self.calls, self.rows = self.calls + 1, self.rows + len(batch)
        for row, p in enumerate(batch):
            p.result.set_result(scores[row])
