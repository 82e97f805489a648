import json

import numpy as np
import pytest

from instructrec.config import GateConfig
from instructrec.data.split import Catalogue, temporal_leave_one_out
from instructrec.evaluation.evaluate import HEADLINE, build_cases, evaluate, without_words
from instructrec.evaluation.gate import (
    MIN_PAIRED_USERS,
    ArmEvaluation,
    Skipped,
    decide,
    decision_from_dict,
    floor_baseline,
    paired_bootstrap,
    placement,
    type_references,
)
from instructrec.language.instructions import HELD_OUT, HISTORY, TYPES, worded
from instructrec.serving.parity import Parity
from tests.conftest import make_tables

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


# like-for-like floor: every type key against the best reference that can serve it

WORDED = tuple(t for t in TYPES if t != HEADLINE)
KEYS = (*TYPES, *(f"{t}/{HELD_OUT}" for t in TYPES))
POWERED = GateConfig(n_bootstrap=500, type_min_users=100)  # 200 users: the types' lower bounds bind


def typed(name, per_type, users=USERS):
    """An arm with per-type per-user values; its pooled values are each user's mean over the types."""
    by_type = {k: (users, np.asarray(v, dtype=float)) for k, v in per_type.items()}
    pooled = np.mean([v for _, v in by_type.values()], axis=0)
    return ArmEvaluation(name, users, pooled, {}, by_type=by_type)


def references(sasrec_p1, popularity=0.05, no_words=0.10):
    """SASRec repeats its P1 value where there is a history and reads nothing elsewhere (as in the real table);
    popularity is one number for everyone; the no-words reference exists for worded types only."""
    rng = np.random.default_rng(7)
    nothing = rng.uniform(0.0, 0.1, 200)
    sas = {k: sasrec_p1 if k.startswith("P1") else nothing for k in KEYS}
    return {
        "sasrec": typed("sasrec", sas),
        "popularity": typed("popularity", {k: np.full(200, popularity) for k in KEYS}),
        "no-words": typed("no-words", {k: np.full(200, no_words) for k in KEYS if worded(k)}),
    }


def failed(d):
    return [c.name for c in d.checks if not c.passed]


def test_winning_on_average_through_words_does_not_hide_losing_p1_i0_to_sasrec():
    rng = np.random.default_rng(10)
    sas_p1 = rng.uniform(0.1, 0.4, 200)
    noise = rng.normal(0.0, 0.15, 200)
    words = {k: np.full(200, 0.5) for k in KEYS if worded(k)}
    losing = typed("c", {HEADLINE: sas_p1 - 0.025 + noise, f"{HEADLINE}/{HELD_OUT}": sas_p1, **words})
    refs = references(sas_p1)
    baseline = floor_baseline({k: refs[k] for k in ("sasrec", "popularity")}, POWERED)
    # the pooled floor of before: 0.44 over every type vs SASRec's 0.16, met by construction
    assert decide(losing, baseline, POWERED).outcome == "promote"
    d = decide(losing, baseline, POWERED, references=refs)
    assert failed(d) == [f"type:{HEADLINE}"]  # the floor (mean over types) itself passes
    assert any(r.startswith(f"{HEADLINE}: ndcg@10") and "vs sasrec" in r for r in d.reasons)
    assert d.numbers["worst_type"] == HEADLINE and d.numbers["worst_type_reference"] == "sasrec"
    assert d.numbers["types_failed"] == HEADLINE and d.numbers["worst_type_ci_low"] < -POWERED.type_epsilon
    # first run: non-inferiority to SASRec not shown, but not shown worse beyond the margin either: a warning
    assert d.numbers["worst_type_ci_high"] > -POWERED.type_epsilon and d.numbers["types_shown_worse"] == ""
    assert d.outcome == "promote" and f"[warn] {HEADLINE}:" in d.summary()
    clearly = typed("c", {HEADLINE: sas_p1 - 0.08 + noise, f"{HEADLINE}/{HELD_OUT}": sas_p1, **words})
    shown = decide(clearly, baseline, POWERED, references=refs)  # the whole interval below -0.02: it binds
    assert shown.outcome == "reject" and shown.numbers["types_shown_worse"] == HEADLINE
    assert f"[FAIL] {HEADLINE}:" in shown.summary()
    slices = {k: float(v.mean()) for k, (_, v) in clearly.by_type.items()}
    same = ArmEvaluation("c", clearly.users, clearly.values, slices, by_type=clearly.by_type)
    served = ArmEvaluation("champion", clearly.users, clearly.values, dict(slices), version="1")
    # with a champion as weak there, the row is a known weakness: it blocks only a regression from what is served
    assert decide(same, baseline, POWERED, champion=served, references=refs).passed(ignore=("win",))
    # with fewer users than type_min_users the type binds only when shown worse beyond the margin
    few = GateConfig(n_bootstrap=500)
    assert decide(losing, baseline, few, references=refs).outcome == "promote"  # not shown worse beyond 0.02
    worse = typed("c", {HEADLINE: sas_p1 - 0.08 + noise, f"{HEADLINE}/{HELD_OUT}": sas_p1, **words})
    assert failed(decide(worse, baseline, few, references=refs)) == [f"type:{HEADLINE}"]


def test_a_history_only_type_is_never_compared_with_the_no_words_reference():
    assert "no-words" not in type_references(HEADLINE, POLICY)
    assert "no-words" not in type_references(f"{HEADLINE}/{HELD_OUT}", POLICY)
    assert set(type_references(HEADLINE, POLICY)) == {"sasrec", "popularity"}
    rng = np.random.default_rng(11)
    sas_p1 = rng.uniform(0.1, 0.3, 200)
    refs = references(sas_p1)
    # a no-words arm far above everything on P1/I0 too: using it there would reject the challenger
    refs["no-words"] = typed("no-words", {k: np.full(200, 0.9) if not worded(k) else np.full(200, 0.1) for k in KEYS})
    chal = typed("c", {k: sas_p1 + 0.05 if not worded(k) else np.full(200, 0.5) for k in KEYS})
    d = decide(chal, None, POWERED, references=refs)
    assert d.outcome == "promote"
    for key in (HEADLINE, f"{HEADLINE}/{HELD_OUT}"):
        check = next(c for c in d.checks if c.name == f"type:{key}")
        assert "vs sasrec" in check.detail and "no-words" not in check.detail


def test_a_worded_type_is_compared_with_the_same_model_without_the_words():
    assert "no-words" in type_references("P2/I0", POLICY) and "sasrec" not in type_references("P2/I0", POLICY)
    assert "no-words" in type_references(f"P1/I2/{HELD_OUT}", POLICY)
    rng = np.random.default_rng(12)
    sas_p1 = rng.uniform(0.1, 0.3, 200)
    refs = references(sas_p1, popularity=0.05, no_words=0.30)  # without its words the model reaches 0.30
    values = {k: sas_p1 + 0.05 if not worded(k) else np.full(200, 0.5) for k in KEYS}
    values["P1/I1"] = np.full(200, 0.2)  # far above popularity and SASRec, below itself without the words
    d = decide(typed("c", values), None, POWERED, references=refs)
    assert failed(d) == ["type:P1/I1"]
    check = next(c for c in d.checks if c.name == "type:P1/I1")
    assert "vs no-words 0.3000" in check.detail and check.value == pytest.approx(-0.1)
    assert all("vs no-words" in c.detail for c in d.checks if c.name.startswith("type:") and worded(c.name[5:]))


def test_the_floor_is_the_mean_over_types_against_each_types_best_reference():
    refs = references(np.full(200, 0.2), popularity=0.25, no_words=0.30)
    # P1/I0 rows: popularity 0.25 beats SASRec 0.20; worded rows: no-words 0.30 beats popularity
    level = typed("c", {k: np.full(200, 0.25 if not worded(k) else 0.30) for k in KEYS})
    d = decide(level, None, POWERED, references=refs)
    assert d.outcome == "reject" and failed(d) == ["floor"]  # every type within epsilon, but nothing beaten
    assert d.numbers["floor_reference"] == pytest.approx((2 * 0.25 + 14 * 0.30) / 16)
    better = typed("c", {k: np.full(200, 0.26 if not worded(k) else 0.31) for k in KEYS})
    assert decide(better, None, POWERED, references=refs).outcome == "promote"


def test_no_champion_lists_every_check_not_run():
    d = decide(arm("c", np.full(200, 0.2)), arm("pop", np.full(200, 0.1)), POLICY)
    not_run = {s.name: s.reason for s in d.skipped}
    assert {"no_regression", "win", "slices", "latency"} <= set(not_run)
    assert not_run["latency"] == "no champion yet" and "onnx_parity" in not_run
    assert {s["name"] for s in d.to_dict()["skipped"]} == set(not_run)
    assert "[not run] no_regression, win, slices, latency: no champion yet." in d.summary()
    page = d.summary(bullets=True).splitlines()  # the version page: one check per list line, the same sentences
    assert page[:2] == ["Gate: PROMOTED.", ""] and all(line.startswith("- [") for line in page[2:])
    assert " ".join([page[0], *(line.removeprefix("- ") for line in page[2:])]) == d.summary()
    assert page[-1].startswith("- [not run]") and len(page) - 2 == len(d.checks) + len({s.reason for s in d.skipped})
    with_champion = decide(
        arm("c", np.full(200, 0.2)), arm("pop", np.full(200, 0.1)), POLICY, champion=arm("champ", np.full(200, 0.1))
    )
    assert {"no_regression", "win"}.isdisjoint(s.name for s in with_champion.skipped)
    assert "latency" in {s.name for s in with_champion.skipped}  # neither latency measured


def test_the_worst_types_delta_and_interval_are_reported():
    rng = np.random.default_rng(13)
    sas_p1 = rng.uniform(0.1, 0.3, 200)
    refs = references(sas_p1, popularity=0.05, no_words=0.10)
    deltas = {k: 0.2 for k in KEYS if worded(k)} | {HEADLINE: 0.03, f"{HEADLINE}/{HELD_OUT}": 0.02}
    deltas[f"P2/I0/{HELD_OUT}"] = -0.013
    values = {k: (sas_p1 if not worded(k) else np.full(200, 0.10)) + d for k, d in deltas.items()}
    values[f"P2/I0/{HELD_OUT}"] = values[f"P2/I0/{HELD_OUT}"] + rng.normal(0, 0.05, 200)
    d = decide(typed("c", values), None, POWERED, references=refs)
    n = d.numbers
    assert n["worst_type"] == f"P2/I0/{HELD_OUT}" and n["worst_type_reference"] == "no-words"
    assert n["worst_type_delta"] == pytest.approx(-0.013 + np.mean(values[f"P2/I0/{HELD_OUT}"] - 0.10 + 0.013))
    assert n["worst_type_ci_low"] < n["worst_type_delta"] < n["worst_type_ci_high"]
    assert n["types_compared"] == len(KEYS)
    assert f"worst row P2/I0/{HELD_OUT} vs no-words" in d.checks[0].detail
    assert json.loads(d.to_json())["numbers"]["worst_type"] == f"P2/I0/{HELD_OUT}"


def test_the_pooled_floor_remains_when_types_are_off_or_not_given():
    refs = references(np.full(200, 0.2))
    chal = typed("c", {k: np.full(200, 0.3) for k in KEYS})
    off = decide(chal, refs["sasrec"], GateConfig(like_for_like=False), references=refs)
    assert [c.name for c in off.checks] == ["floor"] and "vs sasrec" in off.checks[0].detail
    assert any(s.name == "types" and "like_for_like is off" in s.reason for s in off.skipped)
    with pytest.raises(ValueError):
        decide(chal, None, POLICY)


def test_a_decision_written_before_skipped_checks_still_loads():
    old = {
        "outcome": "promote",
        "reasons": ["ndcg@10 0.2646 vs sasrec 0.0521 (must beat it)"],
        "checks": [
            {
                "name": "floor",
                "passed": True,
                "value": 0.2646,
                "threshold": 0.0521,
                "detail": "ndcg@10 0.2646 vs sasrec",
            }
        ],
        "numbers": {"metric": "ndcg@10", "challenger": 0.2646, "baseline": 0.0521, "champion": None},
        "version": "1",
    }
    d = decision_from_dict(old)
    assert d.outcome == "promote" and d.skipped == [] and d.checks[0].name == "floor"
    assert d.summary().startswith("Gate: PROMOTED") and "not run" not in d.summary()
    new = decide(arm("c", np.full(200, 0.2)), arm("pop", np.full(200, 0.1)), POLICY)
    again = decision_from_dict(json.loads(new.to_json()))
    assert again.skipped == new.skipped and Skipped("win", "no champion yet") in again.skipped


def test_the_no_words_cases_keep_everything_but_the_words():
    inter, items = make_tables(0)
    cat = Catalogue.from_items(items, "movie")
    split = temporal_leave_one_out(inter, cat)
    cases = build_cases(split, TYPES, 20, seed=3) | build_cases(split, TYPES, 20, seed=4, held_out=True)
    plain = without_words(cases, cat.noun)
    assert set(plain) == {k for k in cases if worded(k)}  # P1/I0 rows would be the challenger itself
    head = {int(u): t for u, t in zip(cases[HEADLINE].users, cases[HEADLINE].texts, strict=True)}
    for key, case in plain.items():
        source = cases[key]
        assert np.array_equal(case.users, source.users) and np.array_equal(case.target, source.target)
        assert np.array_equal(case.history, source.history)
        assert all(HISTORY in t for t in case.texts) and case.texts != source.texts
        if not key.endswith(HELD_OUT):
            assert case.texts == [head[int(u)] for u in case.users]  # the same user's history-only request
    assert all(t.startswith(f"{HEADLINE}#{HELD_OUT}") for t in plain[f"P2/I0/{HELD_OUT}"].templates)

    class Echo:  # scores the target first when the words name nothing, so the report's alignment shows
        name = "echo"

        def score(self, texts, history):
            return np.tile(np.arange(cat.n_items, dtype=float), (len(texts), 1))

    report = evaluate(Echo(), plain, split)
    per_type = report.user_metric_by_type()
    assert set(per_type) == set(plain)
    users, values = per_type["P2/I1"]
    assert np.all(np.diff(users) > 0) and len(values) == len(users) == report.counts["P2/I1"]
    assert np.mean(values) == pytest.approx(report.by_type["P2/I1"]["ndcg@10"])


def test_a_worded_type_below_its_reference_is_a_known_weakness_unless_it_regresses_from_the_champion():
    rng = np.random.default_rng(11)
    sas_p1 = rng.uniform(0.1, 0.4, 200)
    good = {HEADLINE: sas_p1 + 0.05, f"{HEADLINE}/{HELD_OUT}": sas_p1 + 0.05}
    words = {k: np.full(200, 0.5) for k in KEYS if worded(k)}
    weak = typed("c", {**good, **words, "P2/I0": np.full(200, 0.0)})  # stated taste below popularity
    refs = references(sas_p1)
    baseline = floor_baseline({k: refs[k] for k in ("sasrec", "popularity")}, POWERED)
    first = decide(weak, baseline, POWERED, references=refs)
    assert first.outcome == "promote" and failed(first) == ["type:P2/I0"]  # reported, not hidden
    assert "[warn] P2/I0" in first.summary() and "not binding" in first.summary()
    slices = {k: float(v.mean()) for k, (_, v) in weak.by_type.items()}
    same = ArmEvaluation("c", weak.users, weak.values, slices, by_type=weak.by_type)
    champion = ArmEvaluation("champion", weak.users, weak.values, dict(slices), version="1")
    assert decide(same, baseline, POWERED, champion=champion, references=refs).passed(ignore=("win",))
    better_champion = ArmEvaluation("champion", weak.users, weak.values, {**slices, "P2/I0": 0.2}, version="1")
    regressed = decide(same, baseline, POWERED, champion=better_champion, references=refs)
    assert regressed.outcome == "reject" and "type:P2/I0" in [c.name for c in regressed.checks if not c.holds]


def test_placement_puts_a_version_where_its_decision_says():
    rng = np.random.default_rng(3)
    champ = rng.uniform(0.1, 0.4, 200)
    pop = arm("pop", np.full(200, 0.01))
    better = decide(arm("c", champ + 0.05), pop, POLICY, champion=arm("champ", champ))
    equal = decide(arm("c", champ), pop, POLICY, champion=arm("champ", champ))  # fails only the offline "win"
    worse = decide(arm("c", champ - 0.05), pop, POLICY, champion=arm("champ", champ))
    first = decide(arm("c", np.full(200, 0.2)), pop, POLICY)
    assert placement(better, "1", online_rollout=False) == "champion"
    assert placement(better, "1", online_rollout=True) == "challenger"  # traffic decides a rollout
    assert placement(equal, "1", online_rollout=False) == "challenger"
    assert placement(worse, "1", online_rollout=False) == placement(worse, "1", online_rollout=True) == "none"
    assert placement(first, None, online_rollout=False) == "champion"
    assert placement(first, None, online_rollout=True) == "none"  # nothing to test it against
