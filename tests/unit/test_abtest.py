"""Traffic split, sample-ratio mismatch, and the like rate as a ratio metric over users (delta method)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from instructrec.online.abtest import Effect, Ratio, assign_arm, cuped, experiment_id, ratio, srm_p_value

USERS = [str(u) for u in range(10_000)]


def test_split_is_stable_across_calls_and_processes():
    here = [assign_arm(u, "exp-1", 0.5) for u in USERS[:200]]
    assert here == [assign_arm(u, "exp-1", 0.5) for u in USERS[:200]]
    code = (
        "from instructrec.online.abtest import assign_arm; "
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
    assert srm_p_value(5000, 4500, 0.5) < 1e-3  # 5.1 standard deviations off
    assert srm_p_value(7000, 3000, 0.3) == pytest.approx(1.0)
    assert srm_p_value(5000, 5000, 0.3) < 1e-100
    assert srm_p_value(0, 0, 0.5) == 1.0


def test_the_srm_check_stays_valid_when_read_at_every_look():
    rng = np.random.default_rng(0)
    flagged = 0
    for _ in range(2000):  # fair splits, each read after every 100 users up to 20,000
        challenger = np.cumsum(rng.random(20_000) < 0.5)[99::100]
        flagged += any(srm_p_value(int(n - c), int(c), 0.5) < 0.01 for n, c in zip(range(100, 20_001, 100), challenger))
    assert flagged / 2000 <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 2000)  # at most alpha over all 200 looks


def test_each_challenger_gets_a_fresh_split_of_users():
    one, two = experiment_id("ab-1", "3"), experiment_id("ab-1", "4")
    assert one != two and experiment_id("ab-1", None) == "ab-1"
    same = sum(assign_arm(u, one, 0.5) == assign_arm(u, two, 0.5) for u in USERS) / len(USERS)
    assert 0.47 < same < 0.53  # independent splits agree on about half the users


def _users(n: int, mean: float, rho: float, seed: int, lists: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(impressions, likes) per user: a geometric number of 10-item lists, a Beta propensity with correlation rho."""
    rng = np.random.default_rng(seed)
    shown = rng.geometric(1.0 / lists, n) * 10.0
    total = (1.0 - rho) / rho
    p = rng.beta(mean * total, (1.0 - mean) * total, n)
    return shown, rng.binomial(shown.astype(int), p).astype(float)


def test_delta_method_variance_matches_a_bootstrap_over_users():
    shown, liked = _users(3000, 0.05, 0.05, seed=1)
    r = ratio(liked, shown)
    assert r.value == pytest.approx(liked.sum() / shown.sum())
    rng = np.random.default_rng(2)
    idx = rng.integers(0, len(shown), (4000, len(shown)))
    boot = liked[idx].sum(axis=1) / shown[idx].sum(axis=1)
    assert r.variance == pytest.approx(boot.var(), rel=0.08)
    naive = r.value * (1 - r.value) / shown.sum()  # impressions as independent trials
    assert r.variance > 2.0 * naive  # the design effect the impression-level test ignored


def test_ratio_and_effect_limits():
    assert ratio(np.zeros(0), np.zeros(0)).variance == math.inf
    assert ratio(np.array([1.0]), np.array([10.0])).variance == math.inf  # one user: no variance estimate
    same = ratio(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]))
    assert same.value == pytest.approx(0.1) and same.variance == pytest.approx(0.0)  # every user likes 10%
    eff = Effect(Ratio(0.05, 0.5e-6, 100), Ratio(0.052, 0.5e-6, 100))
    assert eff.z == pytest.approx(2.0) and eff.information == pytest.approx(1e6)
    assert eff.lift == pytest.approx(0.04)
    low, high = eff.lift_interval(1.0, 1.0)
    assert low < eff.lift < high


def _returning(n: int, rho: float, lift: float, rng: np.random.Generator, returning: float = 0.6):
    """Per user: (pre impressions, pre likes, impressions, likes) with one propensity across both periods; a share
    `returning` had traffic before the test, the rest none."""
    total = (1.0 - rho) / rho
    p = rng.beta(0.05 * total, 0.95 * total, n)
    pre = rng.geometric(1.0 / 3.0, n) * 10.0 * (rng.random(n) < returning)
    now = rng.geometric(1.0 / 3.0, n) * 10.0
    return (
        pre,
        rng.binomial(pre.astype(int), p).astype(float),
        now,
        rng.binomial(now.astype(int), np.minimum(p * (1 + lift), 1.0)),
    )


def test_cuped_keeps_the_difference_unbiased_and_its_interval_honest_while_cutting_variance():
    rng = np.random.default_rng(7)
    raw, adjusted, z, ratios = [], [], [], []
    for _ in range(400):
        a, b = _returning(1500, 0.05, 0.0, rng), _returning(1500, 0.05, 0.10, rng)
        adj = cuped((a[3], a[2]), (b[3], b[2]), (a[1], a[0]), (b[1], b[0]))
        raw.append(adj.raw.diff)
        adjusted.append(adj.diff)
        z.append((adj.diff - 0.005) / adj.se)  # the true difference: +10% of 0.05
        ratios.append(adj.variance_ratio)
    assert np.mean(adjusted) == pytest.approx(0.005, abs=0.0003)  # unbiased for the true lift
    assert np.std(z) == pytest.approx(1.0, abs=0.1)  # the adjusted se is the spread it claims
    assert np.var(adjusted) < 0.95 * np.var(raw)  # less variance with a covariate (about 10% in this world)...
    assert np.var(adjusted) / np.var(raw) == pytest.approx(np.mean(ratios), abs=0.04)  # ...by what it reports


def test_cuped_without_earlier_traffic_is_the_plain_difference():
    rng = np.random.default_rng(8)
    a, b = _returning(500, 0.05, 0.0, rng, returning=0.0), _returning(500, 0.05, 0.0, rng, returning=0.0)
    adj = cuped((a[3], a[2]), (b[3], b[2]), (a[1], a[0]), (b[1], b[0]))
    assert adj.theta == 0.0 and adj.diff == pytest.approx(adj.raw.diff)
    assert adj.se == pytest.approx(adj.raw.se, rel=1e-9) and adj.variance_ratio == pytest.approx(1.0)
