"""Champion/challenger gate (DESIGN.md section 8): a pure function.

`decide` sees only numbers measured in this run on the same split: per-user
metric values for challenger and champion (paired by user), a baseline for
the absolute floor, slice values, ONNX parity and latency. Moving aliases is
the registry's job, never this module's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from instructrec.abtest import ArmCounts, prob_better, srm_p_value, two_proportion_z
from instructrec.config import GateConfig, OnlineConfig

Outcome = Literal["promote", "reject", "insufficient_data"]
MIN_PAIRED_USERS = 20


@dataclass(frozen=True)
class ArmEvaluation:
    name: str
    users: np.ndarray  # user rows, sorted
    values: np.ndarray  # per-user gate metric, aligned with users
    slices: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    latency_ms: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if len(self.values) else float("nan")


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top10_overlap: float


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass(frozen=True)
class OnlineEvidence:
    champion: ArmCounts
    challenger: ArmCounts
    challenger_share: float  # the configured split, for the sample-ratio check


@dataclass
class Decision:
    outcome: Outcome
    checks: list[Check]
    numbers: dict[str, float | int | str | None]

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"

    @property
    def reasons(self) -> list[str]:
        failed = [c.detail for c in self.checks if not c.passed]
        return failed or [c.detail for c in self.checks]

    def passed(self, ignore: tuple[str, ...] = ()) -> bool:
        return all(c.passed for c in self.checks if c.name not in ignore)

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
            "numbers": self.numbers,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    def summary(self, verdict: str | None = None) -> str:
        verdict = (
            verdict
            or {"promote": "PROMOTED", "reject": "REJECTED", "insufficient_data": "INSUFFICIENT DATA"}[self.outcome]
        )
        return f"Gate: {verdict}. " + " ".join(f"[{'ok' if c.passed else 'FAIL'}] {c.detail}." for c in self.checks)


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


def floor_baseline(baselines: dict[str, ArmEvaluation], policy: GateConfig) -> ArmEvaluation:
    """The arm the challenger must beat: popularity, or the better of the in-run baselines (policy.floor)."""
    if policy.floor == "popularity":
        return baselines["popularity"]
    return max(baselines.values(), key=lambda arm: arm.mean)


def decide(
    challenger: ArmEvaluation,
    baseline: ArmEvaluation,
    policy: GateConfig,
    champion: ArmEvaluation | None = None,
    parity: Parity | None = None,
) -> Decision:
    """The offline gate: beat the floor baseline (and keep ONNX parity); with a champion, also the paired bootstrap
    no-regression bound, the minimum gain, every slice and the latency guardrail. Every check is kept, passed or
    not, so a rejected version says why."""
    m = policy.metric
    checks: list[Check] = []
    numbers: dict = {
        "metric": m,
        "challenger": challenger.mean,
        "baseline": baseline.mean,
        "baseline_name": baseline.name,
    }

    checks.append(
        Check(
            "floor",
            challenger.mean > baseline.mean,
            challenger.mean,
            baseline.mean,
            f"{m} {challenger.mean:.4f} vs {baseline.name} {baseline.mean:.4f} (must beat it)",
        )
    )
    if parity is not None:
        ok = parity.max_abs_diff <= policy.max_parity_diff and parity.top10_overlap >= policy.min_top10_overlap
        numbers.update(parity_max_abs_diff=parity.max_abs_diff, parity_top10_overlap=parity.top10_overlap)
        checks.append(
            Check(
                "onnx_parity",
                ok,
                parity.max_abs_diff,
                policy.max_parity_diff,
                f"ONNX parity: max |score diff| {parity.max_abs_diff:.2e} (<= {policy.max_parity_diff:.0e}), "
                f"top-10 overlap {parity.top10_overlap:.3f} (>= {policy.min_top10_overlap})",
            )
        )
    if champion is None:
        numbers["champion"] = None
        outcome: Outcome = "promote" if all(c.passed for c in checks) else "reject"
        return Decision(outcome, checks, numbers)

    chal, champ = _paired(challenger, champion)
    numbers.update(champion=champion.mean, champion_version=champion.version, paired_users=len(chal))
    if len(chal) < MIN_PAIRED_USERS:
        checks.append(
            Check(
                "sample_size",
                False,
                len(chal),
                MIN_PAIRED_USERS,
                f"only {len(chal)} users evaluated for both models (need {MIN_PAIRED_USERS})",
            )
        )
        return Decision("insufficient_data", checks, numbers)

    mean, lo, hi = paired_bootstrap(chal - champ, policy.n_bootstrap, policy.confidence, policy.seed)
    numbers.update(delta_mean=mean, delta_ci_low=lo, delta_ci_high=hi, confidence=policy.confidence)
    ci = f"delta {m} {mean:+.4f}, {policy.confidence:.0%} CI [{lo:+.4f}, {hi:+.4f}] over {len(chal)} users"
    checks.append(
        Check(
            "no_regression",
            lo > -policy.epsilon,
            lo,
            -policy.epsilon,
            f"no regression: {ci}; lower bound must exceed {-policy.epsilon:+.4f}",
        )
    )
    wins = mean > policy.min_gain and (lo > 0 if policy.require_significance else True)
    need = f"mean gain must exceed {policy.min_gain:+.4f}" + (
        " and the interval exclude 0" if policy.require_significance else ""
    )
    checks.append(Check("win", wins, mean, policy.min_gain, f"win: {need}"))

    for name in sorted(set(challenger.slices) & set(champion.slices)):
        a, b = challenger.slices[name], champion.slices[name]
        if np.isnan(a) or np.isnan(b):
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
    if challenger.latency_ms is not None and champion.latency_ms is not None:
        limit = champion.latency_ms * (1.0 + policy.latency_tolerance)
        numbers.update(latency_ms=challenger.latency_ms, champion_latency_ms=champion.latency_ms)
        checks.append(
            Check(
                "latency",
                challenger.latency_ms <= limit,
                challenger.latency_ms,
                limit,
                f"latency p50 {challenger.latency_ms:.2f} ms vs champion {champion.latency_ms:.2f} ms "
                f"(limit {limit:.2f} ms)",
            )
        )
    return Decision("promote" if all(c.passed for c in checks) else "reject", checks, numbers)


def online_checks(evidence: OnlineEvidence, policy: OnlineConfig) -> tuple[list[Check], dict, bool]:
    """(checks, numbers, enough data): sample size per arm, sample-ratio mismatch, like-rate test."""
    a, b = evidence.champion, evidence.challenger
    numbers: dict = {
        "online_champion_users": a.users,
        "online_challenger_users": b.users,
        "online_champion_impressions": a.impressions,
        "online_challenger_impressions": b.impressions,
        "online_champion_likes": a.likes,
        "online_challenger_likes": b.likes,
        "online_champion_like_rate": a.like_rate,
        "online_challenger_like_rate": b.like_rate,
    }
    small = min(a.impressions, b.impressions) < policy.min_impressions or min(a.users, b.users) < policy.min_users
    size = Check(
        "online_sample_size",
        not small,
        min(a.impressions, b.impressions),
        policy.min_impressions,
        f"online sample: {a.impressions} / {b.impressions} impressions and {a.users} / {b.users} users "
        f"(champion / challenger; need {policy.min_impressions} and {policy.min_users} per arm)",
    )
    if small:
        return [size], numbers, False
    srm = srm_p_value(a.users, b.users, evidence.challenger_share)
    numbers["online_srm_p"] = srm
    checks = [
        size,
        Check(
            "online_srm",
            srm >= policy.srm_alpha,
            srm,
            policy.srm_alpha,
            f"sample ratio: users {a.users} / {b.users} vs configured challenger share "
            f"{evidence.challenger_share:.0%}, chi-square p {srm:.2g} (mismatch below {policy.srm_alpha:g})",
        ),
    ]
    rates = f"like rate {b.like_rate:.4f} vs champion {a.like_rate:.4f}"
    if policy.test == "bayesian":
        p_better = prob_better(a, b, seed=policy.seed)
        numbers["online_prob_better"] = p_better
        checks.append(
            Check(
                "online_win",
                p_better >= policy.min_prob_better,
                p_better,
                policy.min_prob_better,
                f"online: {rates}, P(challenger better) {p_better:.3f} (need {policy.min_prob_better})",
            )
        )
    else:
        z, p = two_proportion_z(a, b)
        numbers.update(online_z=z, online_p=p)
        checks.append(
            Check(
                "online_win",
                p < policy.alpha,
                p,
                policy.alpha,
                f"online: {rates}, two-proportion z {z:+.2f}, one-sided p {p:.3g} (need < {policy.alpha})",
            )
        )
    return checks, numbers, True


def decide_online(offline: Decision, evidence: OnlineEvidence, policy: GateConfig) -> Decision:
    """The challenger's offline decision (same split, against the same champion) joined with the A/B evidence.

    With `replace_offline_win`, the offline "win" check is kept for the record
    and the win is the online test's to give; every other offline check binds.
    """
    online, numbers, enough = online_checks(evidence, policy.online)
    informational = ("win",) if policy.online.replace_offline_win else ()
    offline_checks = [
        Check(
            c.name,
            c.passed or c.name in informational,
            c.value,
            c.threshold,
            c.detail + (" (offline, informational: decided online)" if c.name in informational else ""),
        )
        for c in offline.checks
    ]
    checks = offline_checks + online
    merged = {**offline.numbers, **numbers}
    if not all(c.passed for c in offline_checks):
        return Decision("reject", checks, merged)
    if not enough:
        return Decision("insufficient_data", checks, merged)
    return Decision("promote" if all(c.passed for c in checks) else "reject", checks, merged)


def decision_from_dict(raw: dict) -> Decision:
    """The inverse of Decision.to_dict, for a decision read back from a run's gate/decision.json."""
    return Decision(raw["outcome"], [Check(**c) for c in raw["checks"]], raw["numbers"])
