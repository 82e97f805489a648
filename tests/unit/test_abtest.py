"""Traffic split, sample-ratio mismatch and the online gate's decisions on fixed counts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from instructrec.abtest import ArmCounts, assign_arm, prob_better, srm_p_value, two_proportion_z
from instructrec.config import GateConfig, OnlineConfig
from instructrec.gate import Check, Decision, OnlineEvidence, decide_online

USERS = [str(u) for u in range(10_000)]


def test_split_is_stable_across_calls_and_processes():
    here = [assign_arm(u, "exp-1", 0.5) for u in USERS[:200]]
    assert here == [assign_arm(u, "exp-1", 0.5) for u in USERS[:200]]
    code = (
        "from instructrec.abtest import assign_arm; "
        "print(''.join('1' if assign_arm(str(u), 'exp-1', 0.5) == 'challenger' else '0' for u in range(200)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout.strip()
    assert other == "".join("1" if a == "challenger" else "0" for a in here)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5])
def test_split_follows_the_configured_share(share):
    got = sum(assign_arm(u, "exp-1", share) == "challenger" for u in USERS) / len(USERS)
    assert abs(got - share) < 0.015


def test_split_limits_and_a_new_experiment_reshuffles():
    assert {assign_arm(u, "e", 0.0) for u in USERS[:500]} == {"champion"}
    assert {assign_arm(u, "e", 1.0) for u in USERS[:500]} == {"challenger"}
    same = sum(assign_arm(u, "exp-1", 0.5) == assign_arm(u, "exp-2", 0.5) for u in USERS) / len(USERS)
    assert 0.45 < same < 0.55  # independent assignments agree half the time
    with pytest.raises(ValueError, match="challenger_share"):
        assign_arm("u", "e", 1.5)


def test_srm_detects_a_broken_split_and_accepts_a_fair_one():
    assert srm_p_value(5000, 5000, 0.5) == pytest.approx(1.0)
    assert srm_p_value(5030, 4970, 0.5) > 0.5
    assert srm_p_value(5000, 4500, 0.5) < 1e-3  # chi2 = 26.3
    assert srm_p_value(7000, 3000, 0.3) == pytest.approx(1.0)
    assert srm_p_value(5000, 5000, 0.3) < 1e-100
    assert srm_p_value(0, 0, 0.5) == 1.0


def test_two_proportion_z_matches_the_textbook_value():
    z, p = two_proportion_z(ArmCounts(500, 1000, 100), ArmCounts(500, 1000, 130))
    assert z == pytest.approx(2.1027, abs=1e-3)
    assert p == pytest.approx(0.01774, abs=2e-4)
    assert two_proportion_z(ArmCounts(1, 0, 0), ArmCounts(1, 10, 1)) == (0.0, 1.0)


def test_prob_better_is_near_certain_for_a_clear_win_and_near_half_for_a_tie():
    assert prob_better(ArmCounts(300, 5000, 200), ArmCounts(300, 5000, 300)) > 0.99
    assert 0.4 < prob_better(ArmCounts(300, 5000, 250), ArmCounts(300, 5000, 250)) < 0.6


def _offline(win: bool = False, regression: bool = False) -> Decision:
    return Decision(
        "reject",
        [
            Check("floor", True, 0.2, 0.1, "floor"),
            Check("no_regression", not regression, 0.0, -0.005, "nr"),
            Check("win", win, 0.0, 0.0, "win"),
        ],
        {"metric": "ndcg@10"},
    )


def _evidence(champion: tuple[int, int, int], challenger: tuple[int, int, int], share: float = 0.5) -> OnlineEvidence:
    return OnlineEvidence(ArmCounts(*champion), ArmCounts(*challenger), share)


POLICY = GateConfig()


def test_too_little_traffic_is_insufficient_data_not_a_win():
    d = decide_online(_offline(), _evidence((40, 500, 10), (40, 500, 60)), POLICY)
    assert d.outcome == "insufficient_data"
    assert [c.name for c in d.checks if not c.passed] == ["online_sample_size"]


def test_a_clear_online_win_promotes_even_without_an_offline_win():
    d = decide_online(_offline(win=False), _evidence((300, 5000, 200), (300, 5000, 300)), POLICY)
    assert d.outcome == "promote"
    assert d.numbers["online_challenger_like_rate"] == pytest.approx(0.06)
    assert "informational" in next(c.detail for c in d.checks if c.name == "win")


def test_no_significant_difference_rejects():
    d = decide_online(_offline(), _evidence((300, 5000, 200), (300, 5000, 210)), POLICY)
    assert d.outcome == "reject" and [c.name for c in d.checks if not c.passed] == ["online_win"]


def test_sample_ratio_mismatch_rejects_a_winning_challenger():
    d = decide_online(_offline(), _evidence((400, 5000, 200), (200, 5000, 300)), POLICY)
    assert d.outcome == "reject" and [c.name for c in d.checks if not c.passed] == ["online_srm"]


def test_an_offline_regression_rejects_whatever_the_traffic_says():
    d = decide_online(_offline(regression=True), _evidence((300, 5000, 200), (300, 5000, 300)), POLICY)
    assert d.outcome == "reject" and [c.name for c in d.checks if not c.passed] == ["no_regression"]


def test_the_bayesian_test_and_a_binding_offline_win():
    bayes = GateConfig(online=OnlineConfig(test="bayesian"))
    assert decide_online(_offline(), _evidence((300, 5000, 200), (300, 5000, 300)), bayes).outcome == "promote"
    assert decide_online(_offline(), _evidence((300, 5000, 200), (300, 5000, 205)), bayes).outcome == "reject"
    strict = GateConfig(online=OnlineConfig(replace_offline_win=False))
    assert decide_online(_offline(win=False), _evidence((300, 5000, 200), (300, 5000, 300)), strict).outcome == "reject"
