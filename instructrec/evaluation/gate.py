"""Champion/challenger gate (docs/gate.md): a pure function.

`decide` sees only numbers measured in this run on the same split: per-user
metric values for challenger and champion (paired by user), per instruction
type the references that can serve that type (the like-for-like floor), slice
values, ONNX parity and latency. Moving aliases is the registry's job, never
this module's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from instructrec.config import GateConfig
from instructrec.language.instructions import worded
from instructrec.serving.parity import Parity

if TYPE_CHECKING:
    from instructrec.evaluation.evaluate import EvalReport

Outcome = Literal["promote", "reject", "insufficient_data", "continue"]  # continue: the A/B test goes on
MIN_PAIRED_USERS = 20


@dataclass(frozen=True)
class ArmEvaluation:
    name: str
    users: np.ndarray  # user rows, sorted
    values: np.ndarray  # per-user gate metric, aligned with users
    slices: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    latency_ms: float | None = None
    # per type key ("P1/I0", "P2/I0/held-out", ...): (user rows, per-user gate metric), for the like-for-like floor
    by_type: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if len(self.values) else float("nan")


def arm_of(report: EvalReport, version: str | None = None, latency: float | None = None) -> ArmEvaluation:
    """A scorer's evaluation as the gate reads it: per-user NDCG@10 (the paired unit), per type and slice."""
    users, values = report.user_metric()
    slices = {t: v["ndcg@10"] for t, v in report.by_type.items()}
    slices.update({s: v["ndcg@10"] for s, v in report.slices.items()})
    return ArmEvaluation(report.name, users, values, slices, version, latency, report.user_metric_by_type())


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str
    binding: bool = True  # False: reported (a failure shows as a warning) but it does not block a promotion

    @property
    def holds(self) -> bool:
        """Passed, or does not bind."""
        return self.passed or not self.binding


@dataclass(frozen=True)
class Skipped:
    """A check the gate did not run, and why (a decision says what it did not look at)."""

    name: str
    reason: str


@dataclass
class Decision:
    outcome: Outcome
    checks: list[Check]
    numbers: dict[str, float | int | str | None]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"

    @property
    def reasons(self) -> list[str]:
        failed = [c.detail for c in self.checks if not c.passed]
        return failed or [c.detail for c in self.checks]

    def passed(self, ignore: tuple[str, ...] = ()) -> bool:
        return all(c.holds for c in self.checks if c.name not in ignore)

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
            "numbers": self.numbers,
            "skipped": [asdict(s) for s in self.skipped],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    def summary(self, verdict: str | None = None, bullets: bool = False) -> str:
        """The verdict and every check, one sentence each; `bullets` puts each on a markdown list line (the model
        version page: a reviewer scans the checks, the one-line form suits logs)."""
        verdict = (
            verdict
            or {
                "promote": "PROMOTED",
                "reject": "REJECTED",
                "insufficient_data": "INSUFFICIENT DATA",
                "continue": "CONTINUE",
            }[self.outcome]
        )
        mark = {(True, True): "ok", (True, False): "ok", (False, True): "FAIL", (False, False): "warn"}
        lines = [f"[{mark[c.passed, c.binding]}] {c.detail}." for c in self.checks]
        by_reason: dict[str, list[str]] = {}
        for s in self.skipped:
            by_reason.setdefault(s.reason, []).append(s.name)
        lines += [f"[not run] {', '.join(names)}: {reason}." for reason, names in by_reason.items()]
        if bullets:
            return f"Gate: {verdict}.\n\n" + "\n".join(f"- {line}" for line in lines)
        return " ".join([f"Gate: {verdict}.", *lines])


def paired_bootstrap(delta: np.ndarray, n: int, confidence: float, seed: int) -> tuple[float, float, float]:
    """Mean of per-user deltas and its percentile bootstrap interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(delta), size=(n, len(delta)))
    means = delta[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(delta.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def _paired(a: ArmEvaluation, b: ArmEvaluation) -> tuple[np.ndarray, np.ndarray]:
    common, ia, ib = np.intersect1d(a.users, b.users, return_indices=True)
    return a.values[ia], b.values[ib]


Placement = Literal["champion", "challenger", "none"]


def placement(decision: Decision, champion: str | None, online_rollout: bool) -> Placement:
    """Where an offline decision puts the candidate's version (model_registry moves the aliases). `champion` on a
    full pass, except in an online rollout, where served traffic decides; `challenger` (an A/B test against the
    champion) when only the offline "win" is missing, or on any pass in an online rollout: a candidate that is
    not worse earns traffic, not the whole audience; nowhere otherwise, and never without a champion to test
    against."""
    if decision.promote and not online_rollout:
        return "champion"
    if champion is not None and decision.passed(ignore=("win",)):
        return "challenger"
    return "none"


def floor_baseline(baselines: dict[str, ArmEvaluation], policy: GateConfig) -> ArmEvaluation:
    """The arm the challenger must beat: popularity, or the better of the in-run baselines (policy.floor)."""
    if policy.floor == "popularity":
        return baselines["popularity"]
    return max(baselines.values(), key=lambda arm: arm.mean)


def type_references(key: str, policy: GateConfig) -> tuple[str, ...]:
    """The references that can serve a type key ("P1/I0", "P2/I0/held-out", ...), in order of preference on ties.

    A reference is fair for a type when it reads no input that the type's case withholds from the challenger, and
    is not the challenger itself. A history-only type (P1/I0, seen or held-out templates) is judged against SASRec
    and popularity (`history_references`): they read the same history, or nothing. A worded type (P2 stated taste,
    I1/I2 intentions) is judged against popularity and the same model without the words (`worded_references`;
    `evaluate.without_words`: each case re-read with the history-only wording, the same history): the words must
    add something over what the challenger does without them and over the catalogue's prior. SASRec, which cannot
    read words, is not a reference of worded types: on P1/I1 and P1/I2 the no-words challenger reads the same
    history (and the P1/I0 row already holds the challenger to SASRec there), and on P0/P2 cases it has no history
    to read. A history-only type is never compared with the no-words reference: that would be the challenger
    against itself. `floor: popularity` keeps popularity alone for every type.
    """
    if policy.floor == "popularity":
        return ("popularity",)
    return policy.worded_references if worded(key) else policy.history_references


def like_for_like(
    challenger: ArmEvaluation, references: dict[str, ArmEvaluation], policy: GateConfig
) -> tuple[Check | None, list[Check], list[Skipped], dict]:
    """The floor, per instruction type: (floor check or None when no type could be compared, one guardrail per
    type key, what was skipped, numbers).

    The rule: for every type key the challenger was evaluated on (the 8 types and each one's held-out templates),
    the reference is the best, by mean over the paired users, of the references that can serve that type
    (`type_references`, among those evaluated). A type passes when the lower bound of the paired bootstrap interval
    over users of (challenger - that reference) exceeds -`type_epsilon`; with fewer than `type_min_users` paired
    users, where that interval is too wide to show it for any model, the type fails only when the upper bound is
    below -`type_epsilon` (shown worse beyond the margin). The floor passes when the challenger's mean over the
    compared type keys (each key weighs the same) beats the mean of their references, strictly. A key with no
    reference evaluated, or fewer than MIN_PAIRED_USERS paired users, is skipped and listed.
    """
    checks: list[Check] = []
    skipped: list[Skipped] = []
    rows: list[TypeRow] = []
    for key, (users, values) in challenger.by_type.items():
        names = [n for n in type_references(key, policy) if n in references and key in references[n].by_type]
        if not names:
            skipped.append(Skipped(f"type:{key}", "no reference that can serve this type was evaluated"))
            continue
        best, chal, ref = _best_reference(key, users, values, names, references)
        if len(chal) < MIN_PAIRED_USERS:
            skipped.append(
                Skipped(f"type:{key}", f"only {len(chal)} users paired with {best} (need {MIN_PAIRED_USERS})")
            )
            continue
        mean, lo, hi = paired_bootstrap(chal - ref, policy.n_bootstrap, policy.confidence, policy.seed)
        row = TypeRow(key, best, float(chal.mean()), float(ref.mean()), mean, lo, hi, len(chal))
        rows.append(row)
        checks.append(_type_check(row, policy))
    if not rows:
        return None, checks, skipped, {}
    floor, numbers = _type_floor(rows, checks, policy)
    return floor, checks, skipped, numbers


@dataclass(frozen=True)
class TypeRow:
    """One type key against its best reference: the means over the paired users and the paired interval."""

    key: str
    reference: str
    challenger: float
    reference_mean: float
    delta: float
    lo: float
    hi: float
    users: int


def _best_reference(
    key: str, users: np.ndarray, values: np.ndarray, names: list[str], references: dict[str, ArmEvaluation]
) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, challenger values, reference values) of the reference with the best mean over the paired users."""
    paired = {}
    for name in names:
        ref_users, ref_values = references[name].by_type[key]
        _, ia, ib = np.intersect1d(users, ref_users, return_indices=True)
        paired[name] = (np.asarray(values)[ia], np.asarray(ref_values)[ib])
    best = max(names, key=lambda n: float(paired[n][1].mean()) if len(paired[n][1]) else -np.inf)
    return best, *paired[best]


def _type_check(row: TypeRow, policy: GateConfig) -> Check:
    eps = policy.type_epsilon
    powered = row.users >= policy.type_min_users
    rule = (
        f"lower bound must exceed {-eps:+.4f}"
        if powered
        else f"fewer than {policy.type_min_users} users: upper bound must exceed {-eps:+.4f}"
    )
    bound = row.lo if powered else row.hi
    return Check(
        f"type:{row.key}",
        bound > -eps,
        bound,
        -eps,
        f"{row.key}: {policy.metric} {row.challenger:.4f} vs {row.reference} {row.reference_mean:.4f}, delta "
        f"{row.delta:+.4f}, {policy.confidence:.0%} CI [{row.lo:+.4f}, {row.hi:+.4f}] over {row.users} users ({rule})",
    )


def _type_floor(rows: list[TypeRow], checks: list[Check], policy: GateConfig) -> tuple[Check, dict]:
    """The floor over the compared type rows (each weighs the same), and the numbers the run records."""
    eps = policy.type_epsilon
    chal_mean = float(np.mean([r.challenger for r in rows]))
    ref_mean = float(np.mean([r.reference_mean for r in rows]))
    worst = min(rows, key=lambda r: r.delta)
    floor = Check(
        "floor",
        chal_mean > ref_mean,
        chal_mean,
        ref_mean,
        f"{policy.metric} {chal_mean:.4f} vs {ref_mean:.4f}: mean over {len(rows)} type rows, each against the best "
        f"reference that can serve it (must beat it); worst row {worst.key} vs {worst.reference} {worst.delta:+.4f} "
        f"[{worst.lo:+.4f}, {worst.hi:+.4f}]",
    )
    numbers = {
        "floor_challenger": chal_mean,
        "floor_reference": ref_mean,
        "type_epsilon": eps,
        "types_compared": len(rows),
        "types_failed": ",".join(c.name.removeprefix("type:") for c in checks if not c.passed),
        "types_shown_worse": ",".join(r.key for r in rows if r.hi < -eps),  # the whole interval beyond the margin
        "worst_type": worst.key,
        "worst_type_reference": worst.reference,
        "worst_type_delta": worst.delta,
        "worst_type_ci_low": worst.lo,
        "worst_type_ci_high": worst.hi,
    }
    return floor, numbers


def _known_weakness(
    check: Check, champion: ArmEvaluation | None, challenger: ArmEvaluation, policy: GateConfig, shown_worse: set[str]
) -> Check:
    """A type row that fails against its references binds where the challenger would make things worse than what
    is served. On the first run nothing is served and the floor over all rows decides (the design's first-run
    rule), so a failing row is reported as a known weakness, except a history-only row (the next-item task, on
    equal terms with SASRec) that is shown worse than its reference by more than the margin (`shown_worse`): a
    first model clearly behind SASRec there is not shipped. With a champion, a failing row is a known weakness
    wherever the challenger is within `slice_tolerance` of the champion on that row: it blocks only as a
    regression from what is served (which the no-regression and slice checks also guard)."""
    if check.passed or not check.name.startswith("type:"):
        return check
    key = check.name.removeprefix("type:")
    if champion is None:
        if not worded(key) and key in shown_worse:
            return check
        why = (
            "no champion yet: reported, not binding for a worded type (the first run is held to the floor)"
            if worded(key)
            else "no champion yet: non-inferiority not shown, but not shown worse by more than the margin either; "
            "reported, not binding (the first run is held to the floor)"
        )
    elif (
        key in champion.slices
        and key in challenger.slices
        and (challenger.slices[key] >= champion.slices[key] - policy.slice_tolerance)
    ):
        why = (
            f"not binding: the champion is no better here ({champion.slices[key]:.4f} vs "
            f"{challenger.slices[key]:.4f}), a known weakness, not a regression"
        )
    else:
        return check
    return Check(check.name, False, check.value, check.threshold, f"{check.detail}; {why}", binding=False)


def decide(
    challenger: ArmEvaluation,
    baseline: ArmEvaluation | None,
    policy: GateConfig,
    champion: ArmEvaluation | None = None,
    parity: Parity | None = None,
    references: dict[str, ArmEvaluation] | None = None,
) -> Decision:
    """The offline gate: the floor (and ONNX parity); with a champion, also the paired bootstrap no-regression
    bound, the minimum gain, every slice and the latency guardrail. Every check is kept, passed or not, so a
    rejected version says why, and every check not run is listed in `skipped` with its reason.

    The floor is like-for-like (`like_for_like`) when `references` (reference arms by name: "popularity",
    "sasrec", "no-words") and the challenger's `by_type` are given and `policy.like_for_like` is on: one guardrail
    per type key against the best reference that can serve it, and the mean over types must beat theirs. Else
    it is the pooled floor of earlier versions: the challenger's mean over all types against `baseline`'s (whose
    numbers are recorded either way)."""
    numbers: dict = {
        "metric": policy.metric,
        "challenger": challenger.mean,
        "baseline": baseline.mean if baseline is not None else None,
        "baseline_name": baseline.name if baseline is not None else None,
    }
    checks, skipped = _floor_checks(challenger, baseline, policy, references, numbers)
    shown_worse = set(filter(None, str(numbers.get("types_shown_worse", "")).split(",")))
    if parity is not None:
        checks.append(_parity_check(parity, policy, numbers))
    else:
        skipped.append(Skipped("onnx_parity", "no ONNX parity measured"))
    checks = [_known_weakness(c, champion, challenger, policy, shown_worse) for c in checks]
    if champion is None:
        numbers["champion"] = None
        skipped += [Skipped(name, "no champion yet") for name in CHAMPION_CHECKS]
        return Decision("promote" if all(c.holds for c in checks) else "reject", checks, numbers, skipped)

    chal, champ = _paired(challenger, champion)
    numbers.update(champion=champion.mean, champion_version=champion.version, paired_users=len(chal))
    if len(chal) < MIN_PAIRED_USERS:
        need = f"only {len(chal)} users evaluated for both models (need {MIN_PAIRED_USERS})"
        checks.append(Check("sample_size", False, len(chal), MIN_PAIRED_USERS, need))
        skipped += [Skipped(name, "too few users evaluated for both models") for name in CHAMPION_CHECKS]
        return Decision("insufficient_data", checks, numbers, skipped)
    checks += _paired_checks(chal - champ, policy, numbers)
    slice_checks, slice_skipped = _slice_checks(challenger, champion, policy)
    checks += slice_checks
    skipped += slice_skipped
    latency = _latency_check(challenger, champion, policy, numbers)
    if isinstance(latency, Check):
        checks.append(latency)
    else:
        skipped.append(latency)
    return Decision("promote" if all(c.holds for c in checks) else "reject", checks, numbers, skipped)


CHAMPION_CHECKS = ("no_regression", "win", "slices", "latency")  # the checks that need a champion to compare with


def _floor_checks(
    challenger: ArmEvaluation,
    baseline: ArmEvaluation | None,
    policy: GateConfig,
    references: dict[str, ArmEvaluation] | None,
    numbers: dict,
) -> tuple[list[Check], list[Skipped]]:
    """The floor first, then the per-type guardrails where the floor is like-for-like."""
    checks: list[Check] = []
    skipped: list[Skipped] = []
    floor = None
    if policy.like_for_like and references and challenger.by_type:
        floor, checks, skipped, type_numbers = like_for_like(challenger, references, policy)
        numbers.update(type_numbers)
    elif policy.like_for_like:
        skipped.append(Skipped("types", "no per-type evaluations of the challenger and its references given"))
    else:
        skipped.append(Skipped("types", "gate.like_for_like is off: the floor pools every type"))
    if floor is None:
        if baseline is None:
            raise ValueError("the gate needs a floor: per-type references or a pooled baseline")
        m = policy.metric
        floor = Check(
            "floor",
            challenger.mean > baseline.mean,
            challenger.mean,
            baseline.mean,
            f"{m} {challenger.mean:.4f} vs {baseline.name} {baseline.mean:.4f} (must beat it)",
        )
    return [floor, *checks], skipped


def _parity_check(parity: Parity, policy: GateConfig, numbers: dict) -> Check:
    ok = parity.max_abs_diff <= policy.max_parity_diff and parity.top10_overlap >= policy.min_top10_overlap
    numbers.update(parity_max_abs_diff=parity.max_abs_diff, parity_top10_overlap=parity.top10_overlap)
    return Check(
        "onnx_parity",
        ok,
        parity.max_abs_diff,
        policy.max_parity_diff,
        f"ONNX parity: max |score diff| {parity.max_abs_diff:.2e} (<= {policy.max_parity_diff:.0e}), "
        f"top-10 overlap {parity.top10_overlap:.3f} (>= {policy.min_top10_overlap})",
    )


def _paired_checks(delta: np.ndarray, policy: GateConfig, numbers: dict) -> list[Check]:
    """No regression (the interval's lower bound) and the win (the mean gain), from the per-user paired deltas."""
    mean, lo, hi = paired_bootstrap(delta, policy.n_bootstrap, policy.confidence, policy.seed)
    numbers.update(delta_mean=mean, delta_ci_low=lo, delta_ci_high=hi, confidence=policy.confidence)
    ci = f"delta {policy.metric} {mean:+.4f}, {policy.confidence:.0%} CI [{lo:+.4f}, {hi:+.4f}] over {len(delta)} users"
    wins = mean > policy.min_gain and (lo > 0 if policy.require_significance else True)
    need = f"mean gain must exceed {policy.min_gain:+.4f}" + (
        " and the interval exclude 0" if policy.require_significance else ""
    )
    return [
        Check(
            "no_regression",
            lo > -policy.epsilon,
            lo,
            -policy.epsilon,
            f"no regression: {ci}; lower bound must exceed {-policy.epsilon:+.4f}",
        ),
        Check("win", wins, mean, policy.min_gain, f"win: {need}"),
    ]


def _slice_checks(
    challenger: ArmEvaluation, champion: ArmEvaluation, policy: GateConfig
) -> tuple[list[Check], list[Skipped]]:
    checks: list[Check] = []
    skipped: list[Skipped] = []
    for name in sorted(set(challenger.slices) | set(champion.slices)):
        if name not in challenger.slices or name not in champion.slices:
            skipped.append(Skipped(f"slice:{name}", "measured for only one of the two models"))
            continue
        a, b = challenger.slices[name], champion.slices[name]
        if np.isnan(a) or np.isnan(b):
            skipped.append(Skipped(f"slice:{name}", "no users in the slice"))
            continue
        checks.append(
            Check(
                f"slice:{name}",
                a >= b - policy.slice_tolerance,
                a - b,
                -policy.slice_tolerance,
                f"slice {name}: {a:.4f} vs champion {b:.4f} (tolerance {policy.slice_tolerance})",
            )
        )
    return checks, skipped


def _latency_check(
    challenger: ArmEvaluation, champion: ArmEvaluation, policy: GateConfig, numbers: dict
) -> Check | Skipped:
    if challenger.latency_ms is None or champion.latency_ms is None:
        missing = "challenger" if challenger.latency_ms is None else "champion"
        return Skipped("latency", f"no latency measured for the {missing}")
    limit = champion.latency_ms * (1.0 + policy.latency_tolerance)
    numbers.update(latency_ms=challenger.latency_ms, champion_latency_ms=champion.latency_ms)
    return Check(
        "latency",
        challenger.latency_ms <= limit,
        challenger.latency_ms,
        limit,
        f"latency p50 {challenger.latency_ms:.2f} ms vs champion {champion.latency_ms:.2f} ms (limit {limit:.2f} ms)",
    )


def decision_from_dict(raw: dict) -> Decision:
    """The inverse of Decision.to_dict, for a decision read back from a run's gate/decision.json."""
    return Decision(
        raw["outcome"],
        [Check(**c) for c in raw["checks"]],
        raw["numbers"],
        [Skipped(**s) for s in raw.get("skipped", [])],  # decisions written before skipped checks were listed: none
    )
