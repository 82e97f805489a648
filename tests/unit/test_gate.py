import numpy as np
import pytest

from instructrec.config import GateConfig
from instructrec.gate import MIN_PAIRED_USERS, ArmEvaluation, Parity, decide, floor_baseline, paired_bootstrap

POLICY = GateConfig(n_bootstrap=500)
USERS = np.arange(200)


def arm(name, values, slices=None, latency=None, users=USERS):
    return ArmEvaluation(name, users, np.asarray(values, dtype=float), slices or {}, latency_ms=latency)


def test_first_run_checks_only_the_floor():
    d = decide(arm("c", np.full(200, 0.2)), arm("pop", np.full(200, 0.1)), POLICY)
    assert d.outcome == "promote"
    assert [c.name for c in d.checks] == ["floor"]
    assert d.numbers["champion"] is None


def test_first_run_below_popularity_is_rejected():
    d = decide(arm("c", np.full(200, 0.05)), arm("pop", np.full(200, 0.1)), POLICY)
    assert d.outcome == "reject"
    assert "must beat" in d.reasons[0]


def test_floor_policy_picks_popularity_or_the_better_baseline():
    baselines = {"popularity": arm("popularity", np.full(200, 0.03)), "sasrec": arm("sasrec", np.full(200, 0.1))}
    assert floor_baseline(baselines, POLICY).name == "sasrec"  # default: the better of the two
    assert floor_baseline(baselines, GateConfig(floor="popularity")).name == "popularity"
    between = arm("c", np.full(200, 0.05))
    assert decide(between, floor_baseline(baselines, POLICY), POLICY).outcome == "reject"
    assert decide(between, floor_baseline(baselines, GateConfig(floor="popularity")), POLICY).outcome == "promote"


def test_clear_improvement_is_promoted_with_interval_above_zero():
    rng = np.random.default_rng(0)
    champ = rng.uniform(0, 0.3, 200)
    d = decide(arm("c", champ + 0.05), arm("pop", np.full(200, 0.01)), POLICY, champion=arm("champ", champ))
    assert d.outcome == "promote"
    assert d.numbers["delta_mean"] == pytest.approx(0.05)
    assert d.numbers["delta_ci_low"] > 0


def test_identical_models_are_not_promoted():
    v = np.random.default_rng(1).uniform(0, 0.3, 200)
    d = decide(arm("c", v), arm("pop", np.full(200, 0.01)), POLICY, champion=arm("champ", v))
    assert d.outcome == "reject"
    assert {c.name for c in d.checks if not c.passed} == {"win"}


def test_regression_beyond_epsilon_is_rejected():
    rng = np.random.default_rng(2)
    champ = rng.uniform(0.1, 0.4, 200)
    d = decide(arm("c", champ - 0.05), arm("pop", np.full(200, 0.01)), POLICY, champion=arm("champ", champ))
    failed = {c.name for c in d.checks if not c.passed}
    assert d.outcome == "reject" and {"no_regression", "win"} <= failed


def test_slice_regression_blocks_an_overall_win():
    rng = np.random.default_rng(3)
    champ = rng.uniform(0, 0.3, 200)
    d = decide(
        arm("c", champ + 0.05, {"cold_users": 0.10}),
        arm("pop", np.full(200, 0.01)),
        POLICY,
        champion=arm("champ", champ, {"cold_users": 0.20}),
    )
    assert d.outcome == "reject"
    assert [c.name for c in d.checks if not c.passed] == ["slice:cold_users"]


def test_broken_onnx_parity_blocks_promotion():
    d = decide(arm("c", np.full(200, 0.2)), arm("pop", np.full(200, 0.1)), POLICY, parity=Parity(0.5, 0.6))
    assert d.outcome == "reject"
    assert [c.name for c in d.checks if not c.passed] == ["onnx_parity"]


def test_latency_regression_blocks_promotion():
    rng = np.random.default_rng(4)
    champ = rng.uniform(0, 0.3, 200)
    d = decide(
        arm("c", champ + 0.05, latency=10.0),
        arm("pop", np.full(200, 0.01)),
        POLICY,
        champion=arm("champ", champ, latency=2.0),
    )
    assert [c.name for c in d.checks if not c.passed] == ["latency"]


def test_too_few_paired_users_is_insufficient_data():
    few = np.arange(MIN_PAIRED_USERS - 1)
    d = decide(
        arm("c", np.full(len(few), 0.3), users=few),
        arm("pop", np.full(len(few), 0.1), users=few),
        POLICY,
        champion=arm("champ", np.full(len(few), 0.1), users=few),
    )
    assert d.outcome == "insufficient_data"


def test_users_are_paired_by_id_not_position():
    champ = arm("champ", [0.0, 1.0] * 100)
    shuffled = np.roll(USERS, 1)
    chal = ArmEvaluation("c", shuffled, np.asarray([0.0, 1.0] * 100)[shuffled], {})
    d = decide(chal, arm("pop", np.full(200, 0.0)), POLICY, champion=champ)
    assert d.numbers["delta_mean"] == pytest.approx(0.0)


def test_bootstrap_interval_contains_the_mean_and_narrows_with_data():
    rng = np.random.default_rng(5)
    small = rng.normal(0.1, 1.0, 50)
    big = rng.normal(0.1, 1.0, 5000)
    m1, lo1, hi1 = paired_bootstrap(small, 1000, 0.95, 0)
    m2, lo2, hi2 = paired_bootstrap(big, 1000, 0.95, 0)
    assert lo1 < m1 < hi1 and lo2 < m2 < hi2
    assert hi2 - lo2 < hi1 - lo1


def test_decision_serialises_with_every_number():
    d = decide(arm("c", np.full(200, 0.2)), arm("pop", np.full(200, 0.1)), POLICY)
    text = d.to_json()
    assert '"outcome": "promote"' in text and "floor" in text
    assert d.summary().startswith("Gate: PROMOTED")
