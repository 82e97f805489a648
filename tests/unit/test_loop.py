"""The one training loop at its limits, on a toy model (no data, no BERT): when it stops, what it keeps, resume."""

from __future__ import annotations

import pytest
import torch

from instructrec.training.loop import LoopRequest, Schedule, run


class _Step(torch.nn.Module):
    def __init__(self, model: torch.nn.Linear):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (self.model(x) ** 2).mean(), len(x)


def _request(scores: list[float], tmp_path=None, fingerprint="a", **schedule) -> tuple[LoopRequest, list[int]]:
    """A loop over a 1-weight model whose validation reads `scores` in turn (the last one repeats)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    calls: list[int] = []

    def validate(m):
        calls.append(len(calls))
        return {"ndcg@10": scores[min(len(calls) - 1, len(scores) - 1)], "weight": float(m.weight.item())}

    gen = torch.Generator().manual_seed(0)
    req = LoopRequest(
        model,
        _Step(model),
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda epoch: [(torch.randn(4, 1, generator=gen),)],
        validate,
        Schedule("toy", **{"epochs": 20, "patience": 3, **schedule}),
        checkpoint=tmp_path / "last.pt" if tmp_path else None,
        fingerprint=fingerprint,
    )
    return req, calls


def test_it_stops_once_patience_epochs_have_passed_since_the_best_and_keeps_the_best():
    req, _ = _request([0.0, 0.1, 0.5, 0.2, 0.2, 0.2, 0.2, 0.2])  # row -1, then epochs 0, 1 (best), 2, ...
    result = run(req)
    trained = [r["epoch"] for r in result.history if r["epoch"] >= 0]
    assert result.best_epoch == 1 and result.best_metric == 0.5
    assert trained == [0, 1, 2, 3, 4]  # epoch 5 would be 4 past the best
    kept = next(r for r in result.history if r["epoch"] == 1)["val_weight"]
    assert req.model.weight.item() == pytest.approx(kept) and not req.model.training


def test_without_select_best_the_last_epoch_is_kept():
    req, _ = _request([0.9, 0.1], select_best=False, epochs=4)
    result = run(req)
    assert result.best_epoch == 3 and req.model.weight.item() == pytest.approx(result.history[-1]["val_weight"])


def test_starting_weights_stay_when_no_epoch_beats_them_and_then_nothing_stops_early():
    req, _ = _request([0.9, 0.1], epochs=6, patience=1)
    start = req.model.weight.item()
    result = run(req)
    assert result.best_epoch == -1 and [r["epoch"] for r in result.history][-1] == 5
    assert req.model.weight.item() == pytest.approx(start)


def test_validation_every_few_epochs_and_always_after_the_last():
    req, calls = _request([0.1, 0.2, 0.3, 0.4], epochs=7, eval_every=3, validate_first=False, patience=10)
    result = run(req)
    assert [r["epoch"] for r in result.history if "val_ndcg@10" in r] == [2, 5, 6] and len(calls) == 3


def test_a_checkpoint_resumes_after_its_last_epoch_a_finished_one_is_reused_another_fingerprint_restarts(tmp_path):
    req, _ = _request([0.1] + [0.1 * i for i in range(1, 30)], tmp_path, epochs=3, patience=10)
    first = run(req)
    assert not first.reused and first.resumed_from is None
    again, calls = _request([0.1], tmp_path, epochs=3, patience=10)
    reused = run(again)
    assert reused.reused and calls == [] and again.model.weight.item() == pytest.approx(req.model.weight.item())

    longer, _ = _request([0.1] + [0.1 * i for i in range(1, 30)], tmp_path, epochs=3, patience=10)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    state["finished"], state["epoch"] = False, 1  # as if killed after the second epoch
    torch.save(state, tmp_path / "last.pt")
    resumed = run(longer)
    assert resumed.resumed_from == 1 and [r["epoch"] for r in resumed.history][-1] == 2

    other, calls = _request([0.1], tmp_path, fingerprint="b", epochs=2)
    fresh = run(other)
    assert fresh.resumed_from is None and not fresh.reused and len(calls) == 3  # row -1 and both epochs
