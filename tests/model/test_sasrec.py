"""The SASRec baseline: causal, learns sequential structure, and plugs into the evaluation protocol."""

import numpy as np
import pytest
import torch

from instructrec.evaluation.evaluate import PopularityScorer, TorchScorer, evaluate
from instructrec.models.sasrec import SASRec, SASRecConfig, SASRecScorer
from instructrec.training.baseline import SASRecSettings, fit_sasrec, training_windows
from instructrec.training.train import can_warm_start, new_scorer, warm_start


def test_windows_keep_every_transition_once():
    seqs = [np.arange(1, 8), np.array([3, 4])]
    w = training_windows(seqs, max_len=3)
    pairs = {(int(a), int(b)) for row in w for a, b in zip(row[:-1], row[1:]) if a > 0}
    assert pairs == {(i, i + 1) for i in range(1, 7)} | {(3, 4)}


def test_states_are_causal():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=20, max_len=6, dim=16, n_layers=1)).eval()
    seq = torch.tensor([[0, 3, 5, 7, 9, 11]])
    changed = seq.clone()
    changed[0, -1] = 2
    a, b = model.states(seq), model.states(changed)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)  # earlier slots never see a later item
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_learns_a_deterministic_successor():
    """A cyclic catalogue walk: the next item is always current + 1."""
    torch.manual_seed(0)
    n = 30
    train = [np.array([(s + t) % n + 1 for t in range(12)]) for s in range(n)]
    model = SASRec(SASRecConfig(n_items=n, max_len=8, dim=32, n_layers=1, dropout=0.0))
    result = fit_sasrec(
        model,
        train,
        SASRecSettings(epochs=60, batch_size=16, lr=5e-3, eval_every=20, patience=60),
        validate=lambda m: 0.0,
    )
    history = np.array([[5, 6, 7, 8, 9, 10, 11, 12]])
    assert SASRecScorer(model).score(["ignored"], history).argmax() + 1 == 13
    assert result.seconds > 0


def test_beats_popularity_on_the_synthetic_split(prepared):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(prepared.catalogue.n_items, max_len=20, dim=32, n_layers=1))
    fit_sasrec(model, prepared.split.train, SASRecSettings(epochs=20, eval_every=5), validate=lambda m: 0.0)
    ours = evaluate(SASRecScorer(model), prepared.test_cases, prepared.split)  # scores every case (P0: no history)
    pop = evaluate(PopularityScorer(prepared.split.popularity), prepared.test_cases, prepared.split)
    assert set(ours.by_type) == set(prepared.test_cases)
    assert ours.by_type["P1/I0"]["ndcg@10"] > pop.by_type["P1/I0"]["ndcg@10"]


def test_a_warm_started_scorer_ranks_history_only_requests_as_its_sasrec(tiny_cfg, prepared):
    """warm_start copies SASRec into the history tower and zeroes the words' and texts' paths: before any tuning
    the scorer's history-only scores are SASRec's, whatever the words say."""
    model, tok = new_scorer(tiny_cfg, prepared.catalogue)
    c = model.config
    sasrec = SASRec(SASRecConfig(c.n_items, c.max_history, c.dim, c.n_layers, c.n_heads))
    fit_sasrec(sasrec, prepared.split.train, SASRecSettings(epochs=3, eval_every=3), validate=lambda m: 0.0)
    assert can_warm_start(model, sasrec)
    warm_start(model, sasrec)
    case = prepared.test_cases["P1/I0"]
    ids = prepared.catalogue.item_ids
    ours = TorchScorer("warm", model, tok, ids, ids).score(case.texts, case.history)
    np.testing.assert_allclose(ours, SASRecScorer(sasrec).score(case.texts, case.history), rtol=1e-5, atol=1e-5)


def test_warm_start_refuses_a_sasrec_of_another_shape(tiny_cfg, prepared):
    model, _ = new_scorer(tiny_cfg, prepared.catalogue)
    c = model.config
    wider = SASRec(SASRecConfig(c.n_items, c.max_history, 2 * c.dim, c.n_layers, c.n_heads))
    assert not can_warm_start(model, wider)
    with pytest.raises(ValueError, match="does not fit"):
        warm_start(model, wider)
