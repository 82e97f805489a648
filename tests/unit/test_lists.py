"""List-quality metrics at their limits, MMR's two ends, and the reasons' building blocks."""

import numpy as np
import pytest

from instructrec.serving.lists import (
    ItemSpace,
    cite,
    coverage,
    ild_genre,
    ild_vector,
    list_metrics,
    mmr,
    novelty,
    served_list_metrics,
    top_columns,
)


def space(vectors, genres, popularity=None, n_users=10):
    n = len(vectors)
    return ItemSpace.build(
        np.asarray(vectors, dtype=float), genres, np.zeros(n) if popularity is None else popularity, n_users
    )


def test_diversity_is_zero_for_identical_items_and_one_for_disjoint_ones():
    s = space([[1, 0], [1, 0], [0, 1], [0, 2]], [("A",), ("A",), ("B",), ("C",)])
    same, apart = np.array([[0, 1]]), np.array([[0, 2]])
    assert ild_genre(same, s)[0] == 0.0 and ild_genre(apart, s)[0] == 1.0
    assert ild_vector(same, s)[0] == pytest.approx(0.0) and ild_vector(apart, s)[0] == pytest.approx(1.0)
    # partial genre overlap: Jaccard distance 1 - 1/2
    t = space([[1, 0], [0, 1]], [("A", "B"), ("A",)])
    assert ild_genre(np.array([[0, 1]]), t)[0] == pytest.approx(0.5)


def test_coverage_and_novelty():
    s = space(np.eye(4), [("A",)] * 4, popularity=np.array([9.0, 9.0, 0.0, 0.0]), n_users=9)
    assert coverage(np.array([[0, 1], [1, 0]]), 4) == 0.5 and coverage(np.array([[0, 1], [2, 3]]), 4) == 1.0
    assert novelty(np.array([[0, 1]]), s)[0] == pytest.approx(0.0)  # everyone has them: no information
    assert novelty(np.array([[2, 3]]), s)[0] == pytest.approx(np.log2(10))
    ragged = served_list_metrics([[0, 1, 2], [2, 3], [1]], s)  # a one-item list has no pairs: skipped
    assert ragged["coverage@10"] == 1.0 and set(ragged) == set(list_metrics(np.array([[0, 1]]), s))


def test_mmr_keeps_the_relevance_order_at_zero_and_spreads_out_at_one():
    unit = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.98, 0.2]])
    relevance = np.array([4.0, 3.0, 1.0, 2.0])
    cands = np.arange(4)
    assert mmr(relevance, cands, unit, 3, 0.0).tolist() == [0, 1, 3]
    assert mmr(relevance, cands, unit, 2, 0.8).tolist() == [0, 2]  # the far item comes second
    with pytest.raises(ValueError):
        mmr(relevance, cands, unit, 2, 1.5)


def test_top_columns_breaks_ties_by_column_like_the_metrics():
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0]])
    assert top_columns(scores, 3).tolist() == [[1, 2, 4]]


def test_cite_picks_the_most_similar_history_item():
    unit = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    assert cite(2, np.array([0, 1]), unit) in (0, 1) and cite(0, np.array([1]), unit) is None  # orthogonal: no reason
    assert cite(0, np.array([2, 1]), unit) == 2
