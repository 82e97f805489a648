"""Group-sequential boundaries: a published table, the error spent at irregular looks, power of the design."""

from __future__ import annotations

import math

import pytest
from scipy.special import ndtri

from instructrec.online.sequential import Boundaries, first_crossing, fixed_sample_z, inflation, spend

# Lan-DeMets O'Brien-Fleming-type spending, 5 equally spaced looks, one-sided alpha 0.025 (two-sided 0.05):
# the standard table (Jennison & Turnbull 2000, ch. 7; R gsDesign::gsDesign(k=5, test.type=1, sfu=sfLDOF)).
OBF_K5 = [4.8769, 3.3569, 2.6803, 2.2898, 2.0310]


def test_obrien_fleming_spending_reproduces_the_published_boundaries():
    b = Boundaries(alpha=0.025, beta=0.2, theta=0.0)
    for k in range(1, 6):
        b.next(k / 5, final=k == 5)
    assert b.upper == pytest.approx(OBF_K5, abs=2e-4)


def test_spending_functions_spend_all_and_nothing_at_the_ends():
    for kind in ("obrien_fleming", "pocock"):
        assert spend(kind, 0.05, 0.0) == 0.0
        assert spend(kind, 0.05, 1.0) == pytest.approx(0.05)
        assert spend(kind, 0.05, 2.0) == pytest.approx(0.05)  # past the horizon nothing more is spent
    assert spend("obrien_fleming", 0.05, 0.25) < spend("pocock", 0.05, 0.25)  # O'Brien-Fleming saves alpha early
    with pytest.raises(ValueError, match="spending"):
        spend("linear", 0.05, 0.5)  # type: ignore[arg-type]


def test_irregular_looks_spend_alpha_by_information_fraction():
    looks = [0.13, 0.4, 0.41, 0.77, 1.0]
    # the upper boundary alone (beta ~ 0 keeps the lower one out of the way): its crossing rate is alpha
    got = first_crossing(lambda: Boundaries(0.05, 1e-12, 0.0), looks, 0.0, draws=200_000, seed=3)
    assert got["upper"] == pytest.approx(0.05, abs=3 * math.sqrt(0.05 * 0.95 / 200_000))
    short = first_crossing(lambda: Boundaries(0.05, 1e-12, 0.0), looks[:2], 0.0, draws=200_000, seed=4)
    assert short["upper"] == pytest.approx(0.05, abs=0.002)  # a final look at t = 0.4 spends what is left


def test_the_inflated_design_has_its_power_and_never_promotes_more_than_alpha():
    r = inflation(0.05, 0.8, looks=10)
    assert 1.0 < r < 1.5
    theta = fixed_sample_z(0.05, 0.8) * math.sqrt(r)
    looks = [k / 10 for k in range(1, 11)]

    def design() -> Boundaries:
        return Boundaries(0.05, 0.2, theta)

    planned = first_crossing(design, looks, theta, draws=200_000, seed=5)
    assert planned["upper"] == pytest.approx(0.80, abs=0.005)
    null = first_crossing(design, looks, 0.0, draws=200_000, seed=6)
    assert null["upper"] <= 0.05  # the lower boundary is non-binding: stopping early can only lower this
    worse = first_crossing(design, looks, -theta, draws=200_000, seed=7)
    assert worse["lower"] > 0.99


def test_boundaries_replayed_from_fractions_continue_exactly():
    design = {"alpha": 0.05, "beta": 0.2, "theta": 2.7}
    live = Boundaries(**design)
    for t in (0.2, 0.35, 0.5):
        live.next(t)
    again = Boundaries.replay([0.2, 0.35, 0.5], **design)
    assert again.next(0.8) == pytest.approx(live.next(0.8))
    with pytest.raises(ValueError, match="does not exceed"):
        live.next(0.8)
    final_up, final_low = live.next(0.9, final=True)
    assert final_up == final_low  # the two boundaries meet at the final look


def test_looks_that_cannot_promote_save_their_alpha_for_later_looks():
    looks, efficacy = [0.2, 0.4, 0.6, 0.8, 1.0], [False, False, True, True, True]

    def held() -> Boundaries:
        b = Boundaries(0.05, 1e-12, 0.0)
        b.next = lambda t, final=False, _next=b.next: _next(t, final, efficacy[len(b.fractions)])  # type: ignore
        return b

    got = first_crossing(held, looks, 0.0, draws=200_000, seed=8)
    assert got["upper"] == pytest.approx(0.05, abs=3 * math.sqrt(0.05 * 0.95 / 200_000))
    b = Boundaries.replay(looks, efficacy=efficacy, alpha=0.05, beta=0.2, theta=2.7)
    assert min(b.upper[:2]) > 20 and b.upper[2] < Boundaries.replay(looks[:3], alpha=0.05, beta=0.2, theta=2.7).upper[2]


def test_the_first_look_that_can_promote_after_many_that_could_not_is_a_single_look_test():
    # nothing was truncated on the null paths before it: its boundary is the normal quantile of alpha spent by t
    fractions = [0.02 * k for k in range(1, 34)] + [0.671]
    b = Boundaries.replay(fractions, efficacy=[False] * 33 + [True], alpha=0.05, beta=0.2, theta=2.78)
    assert b.upper[-1] == pytest.approx(float(ndtri(1.0 - spend("obrien_fleming", 0.05, 0.671))), abs=1e-6)
