"""Behavioural tests (CheckList-style) on a scorer trained on the synthetic genre data.

Each synthetic user favours one genre, and I2 instructions name the target's
genres, so a scorer that follows instructions must: move its top 10 toward a
genre that is asked for (directional), give nearly the same top 10 for
paraphrased templates (invariance), and recommend a one-genre history's genre
(minimum functionality).
"""

import numpy as np
import pytest
import torch

from instructrec.evaluate import TorchScorer
from instructrec.instructions import make_instruction, pad_histories, training_examples
from tests.conftest import GENRES
from tests.model.conftest import build_model
from tests.model.test_model import settings, validator

from instructrec.train import fit


# the tiny data has ~1k positions: lean the mix toward intentions so each type gets enough examples
MIX = {"P1/I0": 0.3, "P1/I2": 0.25, "P0/I2": 0.15, "P1/I1": 0.1, "P0/I1": 0.1, "P2/I2": 0.1}


@pytest.fixture(scope="module")
def scorer(tiny_cfg, prepared):
    """MiniLM (frozen, as the cpu profile runs it): a random tiny BERT cannot read genre words from 1k examples."""
    torch.manual_seed(0)
    cfg = tiny_cfg.model_copy(update={"model": tiny_cfg.model.model_copy(update={"backbone": "minilm", "train_bert": False})})
    model, tok = build_model(cfg, prepared)
    examples = training_examples(prepared.split, 20, seed=0, mix=MIX, stride=4)
    fit(model, tok, examples, settings(epochs=40, patience=40, lr=5e-3, train_bert=False), validator(prepared, tok),
        progress=False)
    ids = prepared.catalogue.item_ids
    return TorchScorer("m", model, tok, ids, ids)


def top10(scores: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    scores = scores.copy()
    for r, seen in enumerate(exclude):
        scores[r, seen - 1] = -np.inf
    return np.argsort(-scores, axis=1)[:, :10] + 1  # item indices


def genre_share(top: np.ndarray, catalogue, genre: str) -> np.ndarray:
    return np.array([[genre in catalogue.genres_of(int(i)) for i in row] for row in top]).mean(axis=1)


def test_directional_asking_for_a_genre_raises_its_share(scorer, prepared):
    split, cat = prepared.split, prepared.catalogue
    single = {cat.genres_of(i)[0]: i for i in range(cat.n_items, 0, -1) if len(cat.genres_of(i)) == 1}
    assert len(single) >= 3
    raised = []
    for u in split.eval_users:
        history = split.history_before_test(u)
        favourite = GENRES[int(split.users[u].removeprefix("u")) % len(GENRES)]
        asked_genre = next(g for g in GENRES if g != favourite and g in single)
        plain = make_instruction("P1/I0", 0, cat, history, None, 20)
        asked = make_instruction("P1/I2", 0, cat, history, single[asked_genre], 20)
        hist = pad_histories([plain.history], 20)
        before = genre_share(top10(scorer.score([plain.text], hist), [history]), cat, asked_genre)[0]
        after = genre_share(top10(scorer.score([asked.text], hist), [history]), cat, asked_genre)[0]
        raised.append(after > before or after == 1.0)
    assert np.mean(raised) >= 0.8, f"the asked genre's share rose for only {np.mean(raised):.0%} of users"


@pytest.mark.parametrize("type_", ["P1/I0", "P1/I2", "P0/I2"])
def test_invariance_paraphrased_templates_give_overlapping_top10(scorer, prepared, type_):
    """Seen paraphrases of every type, and the held-out wording of the I2 types.

    (P1/I0's held-out wording is measured on MovieLens instead, as its own NDCG row: on this toy
    catalogue a history only identifies a genre block of near-tied items, whose order any change of
    words reshuffles - measured here: 0.69 overlap between seen wordings, 0.43 with the held-out one.)
    """
    split, cat = prepared.split, prepared.catalogue
    overlaps = []
    for u in split.eval_users:
        history, target = split.history_before_test(u), int(split.test[u])
        variants = [make_instruction(type_, k, cat, history, target, 20) for k in range(3)]
        if type_.endswith("I2"):
            variants.append(make_instruction(type_, 0, cat, history, target, 20, held_out=True))
        hist = pad_histories([v.history for v in variants], 20)
        tops = top10(scorer.score([v.text for v in variants], hist), [history] * len(variants))
        overlaps += [len(set(tops[0]) & set(tops[j])) / 10 for j in range(1, len(variants))]
    assert len({v.text for v in variants}) == len(variants)  # really different wordings
    assert np.mean(overlaps) >= 0.6, f"mean top-10 overlap across paraphrases {np.mean(overlaps):.2f}"


def test_minimum_functionality_one_genre_history_gets_that_genre(scorer, prepared):
    cat = prepared.catalogue
    shares = []
    for genre in GENRES:
        items = np.array([i for i in range(1, cat.n_items + 1) if cat.genres_of(i)[0] == genre][:8])
        ins = make_instruction("P1/I0", 0, cat, items, None, 20)
        top = top10(scorer.score([ins.text], pad_histories([ins.history], 20)), [items])
        shares.append(genre_share(top, cat, genre)[0])
    assert np.mean(shares) >= 0.5, f"share of the history's genre in the top 10: {np.round(shares, 2)}"
