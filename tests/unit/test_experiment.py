"""The online A/B test's decisions at their edges: plan, continue, promote, harm, futility, horizon, guardrails."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from instructrec.config import GateConfig, OnlineConfig
from instructrec.evaluation.gate import Check, Decision
from instructrec.online.abtest import ArmUsers, Effect, Ratio, ratio
from instructrec.online.experiment import Experiment, Guardrail, Plan, decide_online, look, plan_test, verdict_at
from instructrec.online.sequential import fixed_sample_z

POLICY = OnlineConfig()
START = datetime(2026, 1, 5, tzinfo=UTC)


def _arm(n: int, rate: float, seed: int, shown: int = 20, dislike: float = 0.02) -> ArmUsers:
    rng = np.random.default_rng(seed)
    impressions = np.full(n, float(shown))
    return ArmUsers(
        impressions,
        rng.binomial(shown, rate, n).astype(float),
        rng.binomial(shown, dislike, n).astype(float),
        np.full(n, 2.0),
        np.zeros(n),
    )


def _plan(information: float) -> Plan:
    """A plan with the design's own drift (mde follows from the information), as plan_test would make it."""
    theta = fixed_sample_z(POLICY.alpha, POLICY.power) * math.sqrt(1.2)
    mde = theta / (0.05 * math.sqrt(information))
    return Plan(0.05, 1.0, 20.0, mde, 0.05, 0.8, 1.2, information, 1000, 20000, 24.0, "test")


def _experiment(champion: ArmUsers, challenger: ArmUsers, fraction: float) -> Experiment:
    """An experiment whose plan puts this look at the given information fraction."""
    exp = Experiment("ab-1:v2", "1", "2", START.isoformat(), 0.5)
    eff = Effect(ratio(champion.likes, champion.impressions), ratio(challenger.likes, challenger.impressions))
    exp.plan = _plan(eff.information / fraction)
    return exp


def test_the_plan_is_the_textbook_sample_size_for_one_impression_per_user():
    # one impression per user: the ratio metric is a proportion, and a single-look design (no inflation) needs
    # n = (z_0.95 + z_0.8)^2 * 2 p (1 - p) / delta^2 per arm = 23,494 at p = 5%, delta = 0.5 points
    n = 200_000
    shown = np.ones(n)
    likes = (np.arange(n) < n * 0.05).astype(float)
    traffic = ArmUsers(shown, likes, np.zeros(n), shown, np.zeros(n))
    plan = plan_test(traffic, 10.0, OnlineConfig(design_looks=1, power_margin=0.0), 0.5, "test")
    assert plan.inflation == 1.0 and plan.baseline_rate == pytest.approx(0.05)
    assert plan.users / 2 == pytest.approx(23_494, rel=2e-3)
    assert plan.hours == pytest.approx(plan.users / (n / 10.0), rel=1e-4)
    # the default plans above the promised power by its margin: (z_0.95 + z_0.82)^2 / (z_0.95 + z_0.8)^2 more
    margin = plan_test(traffic, 10.0, OnlineConfig(design_looks=1), 0.5, "test")
    assert margin.power == pytest.approx(POLICY.power + POLICY.power_margin)
    assert margin.users / plan.users == pytest.approx(
        (fixed_sample_z(0.05, 0.82) / fixed_sample_z(0.05, 0.8)) ** 2, 1e-3
    )
    sequential = plan_test(traffic, 10.0, POLICY, 0.5, "test")
    assert sequential.users == pytest.approx(margin.users * sequential.inflation, rel=1e-3)


def test_a_design_the_boundaries_cannot_integrate_is_refused_at_load():
    with pytest.raises(ValidationError, match="design_looks"):
        OnlineConfig(design_looks=200)
    with pytest.raises(ValidationError, match="min_information_step"):
        OnlineConfig(min_information_step=0.001)


def _verdict(z: float, upper: float = 2.5, lower: float = 0.25, final: bool = False, hours: float = 30.0, rails=()):
    eff = Effect(Ratio(1.0, 0.5, 500), Ratio(1.0 + z, 0.5, 500))  # se 1: z as given (exactly, for dyadic z)
    return verdict_at(eff, upper, lower, final, hours, list(rails), POLICY)


def test_each_verdict_at_its_edge():
    assert _verdict(2.5)[0] == "promote"  # on the efficacy boundary
    assert _verdict(2.4999)[0] == "continue"
    assert _verdict(0.2501)[0] == "continue"
    assert _verdict(0.25)[0] == "reject" and "futility" in _verdict(0.25)[1]  # on the lower boundary
    assert _verdict(-2.5)[0] == "reject" and "harm" in _verdict(-2.5)[1]  # significantly worse
    assert "horizon reached" in _verdict(2.4999, final=True)[1] and _verdict(2.4999, final=True)[0] == "reject"
    assert _verdict(2.5, final=True)[0] == "promote"


def test_the_minimum_duration_holds_back_promotion_and_futility_but_not_harm():
    early = POLICY.min_duration_hours - 0.01
    verdict, reason = _verdict(4.0, hours=early)
    assert verdict == "continue" and "held until the minimum duration" in reason
    assert _verdict(4.0, hours=POLICY.min_duration_hours)[0] == "promote"
    assert _verdict(0.0, hours=early)[0] == "continue"  # below the futility boundary: wait for the daily cycle
    assert _verdict(-3.0, hours=1.0)[0] == "reject"  # harm stops at once


def test_guardrails_stop_or_hold_a_winning_challenger():
    broken = Guardrail("dislike rate", "violated", 0.02, 0.01, 0.03, 0.005, "dislike rate up")
    assert _verdict(4.0, rails=[broken]) == ("reject", "stopped: guardrail broken: dislike rate up")
    unsure = Guardrail("error rate", "not_shown", 0.001, -0.001, 0.012, 0.01, "error rate unsure")
    assert _verdict(4.0, rails=[unsure])[0] == "continue"
    assert _verdict(4.0, rails=[unsure], final=True)[0] == "reject"
    not_run = Guardrail("p95_latency", "not_run", None, None, None, 1.25, "no timings")
    assert _verdict(4.0, rails=[not_run])[0] == "promote"


def test_a_look_continues_promotes_or_stops_on_real_per_user_traffic():
    champion = _arm(3000, 0.05, seed=1)
    # a clear win after a daily cycle, a third of the way to the horizon: promote
    win = _arm(3000, 0.08, seed=2)
    exp = _experiment(champion, win, fraction=0.5)
    out = look(exp, champion, win, START + timedelta(hours=30), POLICY, "schedule")
    assert out.verdict == "promote" and exp.looks[-1].fraction == pytest.approx(0.5)
    assert out.look is not None and out.look.z > out.look.upper
    # the same data before the daily cycle: continue, and later looks are still possible
    exp = _experiment(champion, win, fraction=0.5)
    assert look(exp, champion, win, START + timedelta(hours=3), POLICY).verdict == "continue"
    # no difference at half the plan: continue, with the time still to go
    tie = ArmUsers(
        *(a.copy() for a in (champion.impressions, champion.likes, champion.dislikes)),
        champion.requests,
        champion.errors,
    )  # the champion's own traffic again: z = 0
    exp = _experiment(champion, tie, fraction=0.2)
    out = look(exp, champion, tie, START + timedelta(hours=30), POLICY)
    assert out.verdict == "continue" and "20% of the planned sample, about 120 h more" in out.progress
    exp = _experiment(champion, tie, fraction=0.2)  # the same, a few minutes in (the demo's compressed clock)
    out = look(exp, champion, tie, START + timedelta(minutes=3), POLICY)
    assert "20% of the planned sample, about 12 min more" in out.progress
    # a clearly worse challenger: stopped for harm before the minimum duration
    bad = _arm(3000, 0.03, seed=4)
    exp = _experiment(champion, bad, fraction=0.3)
    out = look(exp, champion, bad, START + timedelta(hours=2), POLICY)
    assert out.verdict == "reject" and "harm" in out.reason
    # at the horizon without a significant win: the champion stays
    exp = _experiment(champion, tie, fraction=1.02)
    out = look(exp, champion, tie, START + timedelta(hours=30), POLICY)
    assert out.verdict == "reject" and "horizon reached" in out.reason and exp.looks[-1].final


def test_too_few_users_and_a_sample_ratio_mismatch():
    champion = _arm(3000, 0.05, seed=1)
    exp = _experiment(champion, _arm(3000, 0.05, seed=2), fraction=0.5)
    out = look(exp, champion, _arm(POLICY.min_users - 1, 0.05, seed=2), START + timedelta(hours=30), POLICY)
    assert out.verdict == "continue" and "collecting" in out.reason and not exp.looks
    out = look(exp, champion, _arm(2500, 0.08, seed=2), START + timedelta(hours=30), POLICY)
    assert out.verdict == "reject" and "sample ratio mismatch" in out.reason
    assert look(exp, champion, champion, START + timedelta(hours=31), POLICY).verdict == "reject"  # stays decided


def test_the_first_look_sizes_the_test_blind_to_the_arms_when_there_was_no_champion_traffic():
    champion, challenger = _arm(400, 0.05, seed=1), _arm(400, 0.05, seed=2)
    exp = Experiment("ab-1:v2", "1", "2", START.isoformat(), 0.5)
    look(exp, champion, challenger, START + timedelta(hours=5), POLICY)
    assert exp.plan is not None and exp.plan.source.startswith("the first look")
    assert exp.plan.baseline_rate == pytest.approx(
        (champion.likes.sum() + challenger.likes.sum()) / (champion.impressions.sum() + challenger.impressions.sum())
    )


def test_an_experiment_survives_json_and_continues_on_the_same_boundaries(tmp_path):
    champion = _arm(3000, 0.05, seed=1)
    exp = _experiment(champion, _arm(3000, 0.052, seed=2), fraction=0.3)
    look(exp, champion, _arm(3000, 0.052, seed=2), START + timedelta(hours=10), POLICY)
    exp.save(tmp_path)
    again = Experiment.load(tmp_path, exp.id)
    assert again is not None
    assert json.loads(json.dumps(again.to_dict())) == json.loads(json.dumps(exp.to_dict()))
    later_a, later_b = _arm(6000, 0.05, seed=5), _arm(6000, 0.052, seed=6)
    a = look(exp, later_a, later_b, START + timedelta(hours=30), POLICY)
    b = look(again, later_a, later_b, START + timedelta(hours=30), POLICY)
    assert a.look is not None and b.look is not None and a.look.upper == b.look.upper and a.verdict == b.verdict


def _offline(regression: bool = False) -> Decision:
    return Decision(
        "reject",
        [
            Check("floor", True, 0.2, 0.1, "floor"),
            Check("no_regression", not regression, 0.0, -0.005, "nr"),
            Check("win", False, 0.0, 0.0, "win"),
        ],
        {"metric": "ndcg@10"},
    )


def test_the_gate_joins_the_look_with_the_offline_checks():
    champion, win = _arm(3000, 0.05, seed=1), _arm(3000, 0.08, seed=2)
    exp = _experiment(champion, win, fraction=0.5)
    out = look(exp, champion, win, START + timedelta(hours=30), POLICY)
    d = decide_online(_offline(), out, exp, GateConfig())
    assert d.outcome == "promote" and "informational" in next(c.detail for c in d.checks if c.name == "win")
    assert d.numbers["online_looks"] == 1 and d.numbers["online_fraction"] == pytest.approx(0.5)
    assert not math.isnan(d.numbers["online_lift_low"])  # type: ignore[arg-type]
    regressed = decide_online(_offline(regression=True), out, exp, GateConfig())
    assert regressed.outcome == "reject" and [c.name for c in regressed.checks if not c.passed] == ["no_regression"]
    strict = GateConfig(online=OnlineConfig(replace_offline_win=False))
    assert decide_online(_offline(), out, exp, strict).outcome == "reject"
    tie = ArmUsers(champion.impressions, champion.likes, champion.dislikes, champion.requests, champion.errors)
    exp = _experiment(champion, tie, fraction=0.2)
    going = decide_online(_offline(), look(exp, champion, tie, START + timedelta(hours=30), POLICY), exp, GateConfig())
    assert going.outcome == "continue" and going.summary().startswith("Gate: CONTINUE")


def test_a_planned_sample_reached_before_the_daily_cycle_waits_for_it():
    champion = _arm(3000, 0.05, seed=1)
    win = _arm(3000, 0.08, seed=2)
    exp = _experiment(champion, win, fraction=1.5)
    out = look(exp, champion, win, START + timedelta(hours=6), POLICY)
    assert out.verdict == "continue" and out.look is not None and not out.look.final and not out.look.efficacy
    more_a, more_b = _arm(4000, 0.05, seed=3), _arm(4000, 0.08, seed=4)
    out = look(exp, more_a, more_b, START + timedelta(hours=POLICY.min_duration_hours), POLICY)
    assert out.look is not None and out.look.final and out.verdict == "promote"
