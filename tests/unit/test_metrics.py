import numpy as np
import pytest

from instructrec.evaluation import metrics


def test_perfect_ranking_scores_one():
    scores = np.array([[0.1, 0.9, 0.2], [0.8, 0.1, 0.3]])
    ranks = metrics.target_ranks(scores, np.array([1, 0]))
    assert ranks.tolist() == [0, 0]
    for name, values in metrics.per_row(ranks, metrics.FULL_METRICS).items():
        assert values.tolist() == [1.0, 1.0], name


def test_miss_beyond_k_scores_zero():
    scores = np.arange(30, dtype=float)[None, :]  # target at column 0 is ranked last (29)
    ranks = metrics.target_ranks(scores, np.array([0]))
    assert ranks.tolist() == [29]
    row = metrics.per_row(ranks, metrics.FULL_METRICS)
    assert all(v[0] == 0.0 for v in row.values())


def test_hand_computed_values_at_rank_three():
    # target (col 3) has two higher-scored items -> rank 2 (0-based)
    scores = np.array([[0.9, 0.8, 0.1, 0.5, 0.2]])
    ranks = metrics.target_ranks(scores, np.array([3]))
    assert ranks.tolist() == [2]
    assert metrics.ndcg(ranks, 5)[0] == pytest.approx(1 / np.log2(4))  # 0.5
    assert metrics.ndcg(ranks, 2)[0] == 0.0
    assert metrics.mrr(ranks, 10)[0] == pytest.approx(1 / 3)
    assert metrics.hit_rate(ranks, 3)[0] == 1.0 and metrics.hit_rate(ranks, 2)[0] == 0.0


def test_excluded_items_do_not_count_ahead():
    scores = np.array([[0.9, 0.8, 0.1, 0.5, 0.2]])
    exclude = np.array([[True, True, False, False, False]])
    assert metrics.target_ranks(scores, np.array([3]), exclude).tolist() == [0]


def test_nan_scores_are_excluded_exactly_as_the_mask_excludes_even_beside_an_unscorable_target():
    scores = np.array([[0.9, -np.inf, 0.8, -np.inf, 0.5], [0.9, 0.8, 0.1, 0.5, 0.2]])
    exclude = np.array([[True, True, False, False, False], [False, True, False, False, True]])
    target = np.array([3, 2])  # row 0: a target the model cannot score (-inf), tied with an excluded -inf
    marked = np.where(exclude, np.nan, scores)
    assert metrics.target_ranks(marked, target).tolist() == metrics.target_ranks(scores, target, exclude).tolist()
    assert metrics.target_ranks(marked, target).tolist() == [2, 2]  # unexcluded, row 0 would be 4


def test_ties_break_by_position_so_constant_scores_are_not_rewarded():
    scores = np.zeros((1, 100))
    assert metrics.target_ranks(scores, np.array([50])).tolist() == [50]
    assert metrics.target_ranks(scores, np.array([0])).tolist() == [0]


def test_sampled_protocol_ranks_among_candidates_only():
    scores = np.array([[0.0, 5.0, 1.0, 2.0, 3.0, 4.0]])
    # target col 2 (score 1.0); negatives 0 (0.0) and 3 (2.0) -> one negative ahead
    assert metrics.sampled_ranks(scores, np.array([2]), np.array([[0, 3]])).tolist() == [1]
    row = metrics.per_row(np.array([1]), ("s_hr@1", "s_ndcg@3"), prefix="s_")
    assert row["s_hr@1"][0] == 0.0
    assert row["s_ndcg@3"][0] == pytest.approx(1 / np.log2(3))


def test_negatives_are_the_unseen_items_that_exist_and_padding_never_outranks_the_target():
    from instructrec.evaluation.evaluate import _padded, _sample_unseen

    rng = np.random.default_rng(0)
    assert sorted(_sample_unseen(rng, 5, np.array([1, 2, 3]), 9).tolist()) == [4, 5]  # ends: only two exist
    assert _sample_unseen(rng, 3, np.array([1, 2, 3]), 9).tolist() == []
    many = _sample_unseen(rng, 1000, np.arange(1, 991), 9)  # 10 left: the exact draw after the rejection rounds
    assert len(set(many.tolist())) == 9 and (many > 990).all()
    row = _padded(np.array([4, 5]), 2, 9)
    assert row.tolist() == [4, 5] + [2] * 7
    scores = np.array([[0.0, 0.5, 0.9, 0.1, 0.2]])  # columns = items 1..5; the target (item 2) scores 0.9... not
    scores[0, 1] = 0.15  # target item 2 at 0.15: item 5 (0.2) is ahead, item 4 (0.1) is not, the padding never
    assert metrics.sampled_ranks(scores, np.array([1]), row[None] - 1).tolist() == [1]
