"""The online A/B test of a challenger: a planned horizon, group-sequential looks, harm stops and guardrails.

Design, in short (the reasoning is in docs/gate.md):
- Users are randomised (a fresh split per challenger) and are the unit of
  analysis: the like rate is a ratio of per-user sums, its variance from the
  delta method (`abtest.ratio`).
- When the challenger starts, a power calculation on the champion's recent
  traffic (its like rate and that rate's per-user variance) sets the horizon:
  the information I_max that gives `power` for a relative lift of `mde` at
  one-sided `alpha`, inflated for the sequential design. Without enough
  champion traffic, the first look's pooled traffic (blind to the arms) sizes it.
- Every look (hourly, on an event, by hand) reads the information fraction
  t = I / I_max and the Lan-DeMets boundaries at t (`sequential.Boundaries`):
  above the efficacy boundary promotes, below the lower boundary stops
  (harm when the challenger is doing worse, else futility), and in
  between means continue; at the horizon (t >= 1) or the maximum duration the
  final look spends what is left, and not significant means the champion stays.
- No promotion and no futility stop before `min_duration_hours` (a daily
  cycle); harm, a sample-ratio mismatch or a broken guardrail stop at any look.
  Promotion also needs each guardrail (dislike rate, error rate, p95 latency)
  shown non-inferior within its margin.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.special import ndtri

from instructrec.config import GateConfig, OnlineConfig
from instructrec.evaluation.gate import Check, Decision
from instructrec.io import write_json
from instructrec.online.abtest import ArmUsers, Effect, ratio, srm_p_value
from instructrec.online.sequential import Boundaries, fixed_sample_z, inflation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Verdict = Literal["continue", "promote", "reject"]
MIN_RATE_MARGIN = 0.001  # a relative margin on a rate near zero is no margin: at least 0.1 point


@dataclass(frozen=True)
class Plan:
    """The test's horizon, from a power calculation."""

    baseline_rate: float  # the champion's like rate
    user_variance: float  # variance of the per-user linearised likes (likes - rate * impressions)
    impressions_per_user: float
    mde: float
    alpha: float
    power: float
    inflation: float  # information of the sequential design / a single-look test's
    information: float  # I_max: 1 / variance of the like-rate difference at the horizon
    users: int  # both arms, projected at the planned split
    impressions: int
    hours: float | None  # projected at the traffic that sized the plan
    source: str  # what sized it

    @property
    def theta(self) -> float:
        """The planned effect as the drift of the z statistic at the horizon."""
        return self.mde * self.baseline_rate * math.sqrt(self.information)


_inflation = functools.lru_cache(maxsize=32)(inflation)


def plan_test(traffic: ArmUsers, hours: float | None, policy: OnlineConfig, share: float, source: str) -> Plan:
    """Users and impressions needed to detect a relative lift of `policy.mde` with `policy.planned_power`."""
    rate = ratio(traffic.likes, traffic.impressions).value
    linear = traffic.likes - rate * traffic.impressions
    variance = float(linear.var(ddof=1))
    per_user = float(traffic.impressions.mean())
    power = policy.planned_power
    factor = _inflation(policy.alpha, power, policy.design_looks, policy.alpha_spending, policy.beta_spending)
    information = factor * (fixed_sample_z(policy.alpha, power) / (policy.mde * rate)) ** 2
    users = information * variance / per_user**2 * (1.0 / share + 1.0 / (1.0 - share))
    per_hour = traffic.users / hours if hours else None
    return Plan(
        rate,
        variance,
        per_user,
        policy.mde,
        policy.alpha,
        power,
        factor,
        information,
        math.ceil(users),
        math.ceil(users * per_user),
        users / per_hour if per_hour else None,
        source,
    )


@dataclass
class Look:
    at: str  # ISO time
    trigger: str  # schedule | event | manual | simulation
    hours: float  # since the test started
    fraction: float  # information fraction t
    z: float
    upper: float  # efficacy boundary (z)
    lower: float  # harm/futility boundary (z)
    final: bool
    lift: float
    lift_low: float  # repeated confidence interval (level 1 - 2 alpha, valid at every look)
    lift_high: float
    users: tuple[int, int]  # champion, challenger
    impressions: tuple[int, int]
    likes: tuple[int, int]
    verdict: Verdict
    reason: str
    efficacy: bool = True  # could this look promote (False before the minimum duration: no alpha spent)


@dataclass(frozen=True)
class Guardrail:
    name: str
    status: Literal["ok", "not_shown", "violated", "not_run"]
    value: float | None  # challenger - champion (relative for ratios of p95 latency)
    low: float | None
    high: float | None
    margin: float
    detail: str


@dataclass
class Outcome:
    """What one look decided, with everything a reviewer needs to check it."""

    verdict: Verdict
    reason: str
    look: Look | None  # None: no look was counted (too little traffic, nothing new)
    guardrails: list[Guardrail]
    srm_p: float | None
    progress: str  # "38% of the planned sample, about 9 h more at current traffic"


@dataclass
class Experiment:
    """The state of one A/B test: its plan and every look so far (kept as JSON between looks)."""

    id: str  # the split's salt
    champion: str
    challenger: str
    started: str  # ISO time
    share: float
    plan: Plan | None = None
    looks: list[Look] = field(default_factory=list)
    _bounds: Boundaries | None = field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return bool(self.looks) and self.looks[-1].verdict != "continue"

    def boundaries(self, policy: OnlineConfig) -> Boundaries:
        """The boundaries of the looks so far (recomputed from their fractions once, then carried)."""
        if self._bounds is None:
            assert self.plan is not None
            counted = [lk for lk in self.looks if not math.isnan(lk.upper)]  # an SRM stop sets no boundary
            self._bounds = Boundaries.replay(
                [lk.fraction for lk in counted],
                [lk.final for lk in counted],
                [lk.efficacy for lk in counted],
                alpha=policy.alpha,
                beta=1.0 - self.plan.power,
                theta=self.plan.theta,
                alpha_spending=policy.alpha_spending,
                beta_spending=policy.beta_spending,
            )
        return self._bounds

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "champion": self.champion,
            "challenger": self.challenger,
            "started": self.started,
            "share": self.share,
            "plan": asdict(self.plan) if self.plan else None,
            "looks": [asdict(lk) for lk in self.looks],
        }

    @classmethod
    def from_dict(cls, raw: dict) -> Experiment:
        looks = [Look(**{**lk, **{k: tuple(lk[k]) for k in ("users", "impressions", "likes")}}) for lk in raw["looks"]]
        plan = Plan(**raw["plan"]) if raw.get("plan") else None
        return cls(raw["id"], raw["champion"], raw["challenger"], raw["started"], raw["share"], plan, looks)

    def save(self, folder: Path) -> Path:
        return write_json(self.to_dict(), folder / f"{self.id.replace(':', '_')}.json")

    @classmethod
    def load(cls, folder: Path, experiment_id: str) -> Experiment | None:
        path = folder / f"{experiment_id.replace(':', '_')}.json"
        return cls.from_dict(json.loads(path.read_text())) if path.exists() else None


def _hours(since: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(since)).total_seconds() / 3600.0


def _pooled(a: ArmUsers, b: ArmUsers) -> ArmUsers:
    cat = np.concatenate
    return ArmUsers(
        cat([a.impressions, b.impressions]),
        cat([a.likes, b.likes]),
        cat([a.dislikes, b.dislikes]),
        cat([a.requests, b.requests]),
        cat([a.errors, b.errors]),
    )


def _rate_guardrail(
    name: str,
    champion: tuple[np.ndarray, np.ndarray],
    challenger: tuple[np.ndarray, np.ndarray],
    margin: float,
    z_stop: float,
    z_ni: float,
) -> Guardrail:
    """Challenger minus champion on a rate (absolute): violated when even the low end of the repeated interval is
    past the margin; non-inferiority shown when the high end of the one-sided interval is within it."""
    eff = Effect(ratio(*champion), ratio(*challenger))
    if math.isnan(eff.champion.value) or math.isnan(eff.challenger.value) or not math.isfinite(eff.se):
        return Guardrail(name, "not_run", None, None, None, margin, f"{name}: no traffic to compare")
    d, se = eff.diff, eff.se
    low, high = d - z_stop * se, d + z_ni * se
    status = "violated" if low > margin else ("ok" if high < margin else "not_shown")
    text = (
        f"{name} {eff.challenger.value:.4f} vs champion {eff.champion.value:.4f} "
        f"(difference {d:+.4f}, upper bound {high:+.4f}, margin {margin:+.4f})"
    )
    return Guardrail(name, status, d, low, high, margin, text)


def _latency_guardrail(
    champion: np.ndarray, challenger: np.ndarray, policy: OnlineConfig, draws: int = 200
) -> Guardrail:
    """Ratio of p95 latencies (challenger / champion) with a bootstrap interval over requests."""
    margin = 1.0 + policy.latency_margin
    if min(len(champion), len(challenger)) < policy.min_latency_requests:
        return Guardrail(
            "p95_latency",
            "not_run",
            None,
            None,
            None,
            margin,
            f"p95 latency: {len(champion)} / {len(challenger)} timed requests (need {policy.min_latency_requests} "
            "per arm): not run",
        )
    rng = np.random.default_rng(policy.seed)
    a = np.quantile(rng.choice(champion, (draws, len(champion))), 0.95, axis=1)
    b = np.quantile(rng.choice(challenger, (draws, len(challenger))), 0.95, axis=1)
    ratios = b / np.maximum(a, 1e-9)
    point = float(np.quantile(challenger, 0.95) / max(np.quantile(champion, 0.95), 1e-9))
    low = float(np.quantile(ratios, policy.guardrail_alpha))
    high = float(np.quantile(ratios, 1.0 - policy.guardrail_alpha))
    status = "violated" if low > margin else ("ok" if high < margin else "not_shown")
    return Guardrail(
        "p95_latency",
        status,
        point,
        low,
        high,
        margin,
        f"p95 latency {np.quantile(challenger, 0.95):.1f} ms vs champion {np.quantile(champion, 0.95):.1f} ms "
        f"(ratio {point:.2f}, interval [{low:.2f}, {high:.2f}], margin {margin:.2f})",
    )


def guardrails(champion: ArmUsers, challenger: ArmUsers, policy: OnlineConfig, z_stop: float) -> list[Guardrail]:
    z_ni = float(ndtri(1.0 - policy.guardrail_alpha))
    base = ratio(champion.dislikes, champion.impressions).value
    dislike_margin = max(policy.dislike_margin * (base if base > 0 else 0.0), MIN_RATE_MARGIN)
    return [
        _rate_guardrail(
            "dislike rate",
            (champion.dislikes, champion.impressions),
            (challenger.dislikes, challenger.impressions),
            dislike_margin,
            z_stop,
            z_ni,
        ),
        _rate_guardrail(
            "error rate",
            (champion.errors, champion.requests),
            (challenger.errors, challenger.requests),
            policy.error_margin,
            z_stop,
            z_ni,
        ),
        _latency_guardrail(champion.latency_ms, challenger.latency_ms, policy),
    ]


def _progress(fraction: float, hours: float) -> str:
    if fraction <= 0:
        return "no information yet"
    if fraction >= 1:
        return "the planned sample is complete"
    more = hours * (1.0 - fraction) / fraction
    left = f"{more:.0f} h" if more >= 1.0 else f"{max(more * 60.0, 1.0):.0f} min"
    return f"{fraction:.0%} of the planned sample, about {left} more at current traffic"


def look(
    exp: Experiment,
    champion: ArmUsers,
    challenger: ArmUsers,
    now: datetime,
    policy: OnlineConfig,
    trigger: str = "manual",
    prior: tuple[ArmUsers, float] | None = None,
) -> Outcome:
    """One look at the test: continue, promote or reject, recorded in `exp.looks` when it counts.

    prior: the champion's traffic before the test and its span in hours, to size the plan on the first look."""
    if exp.finished:
        last = exp.looks[-1]
        return Outcome(last.verdict, f"decided at an earlier look: {last.reason}", None, [], None, "finished")
    hours = _hours(exp.started, now)
    if min(champion.users, challenger.users) < policy.min_users:
        reason = (
            f"collecting: {champion.users} / {challenger.users} users (champion / challenger), "
            f"the first look needs {policy.min_users} per arm"
        )
        return Outcome("continue", reason, None, [], None, "waiting for the first look")
    if exp.plan is None:
        if prior is not None and prior[0].users >= policy.min_users and prior[0].likes.sum() > 0:
            exp.plan = plan_test(prior[0], prior[1], policy, exp.share, "champion traffic before the test")
        else:
            pooled = _pooled(champion, challenger)
            if pooled.likes.sum() == 0:
                return Outcome("continue", "collecting: no likes yet in either arm", None, [], None, "no likes yet")
            exp.plan = plan_test(pooled, hours, policy, exp.share, "the first look's traffic, both arms pooled")
    srm = srm_p_value(champion.users, challenger.users, exp.share)
    if srm < policy.srm_alpha:
        reason = (
            f"stopped: sample ratio mismatch, users {champion.users} / {challenger.users} against a configured "
            f"challenger share of {exp.share:.0%} (always-valid p {srm:.2g} < {policy.srm_alpha:g}): the split or the "
            "logging is broken, so no comparison between the arms can be trusted"
        )
        return _record(exp, champion, challenger, now, hours, trigger, "reject", reason, srm, None, [], policy)
    eff = Effect(ratio(champion.likes, champion.impressions), ratio(challenger.likes, challenger.impressions))
    fraction = eff.information / exp.plan.information
    early = hours < policy.min_duration_hours  # a planned sample reached sooner waits for the daily cycle
    final = (fraction >= 1.0 and not early) or hours >= policy.max_duration_hours
    last = exp.looks[-1].fraction if exp.looks else 0.0
    if fraction < last + policy.min_information_step:
        if not final:
            reason = (
                f"continue: {fraction - last:+.3f} information since the last counted look (a look needs "
                f"{policy.min_information_step:g})"
            )
            return Outcome("continue", reason, None, [], srm, _progress(last, hours))
        fraction = max(fraction, last + 1e-6)
    upper, lower = exp.boundaries(policy).next(fraction, final, not early)  # no alpha spent before the duration
    rails = guardrails(champion, challenger, policy, upper)
    verdict, reason = verdict_at(eff, upper, lower, final, hours, rails, policy)
    return _record(
        exp,
        champion,
        challenger,
        now,
        hours,
        trigger,
        verdict,
        reason,
        srm,
        (eff, fraction, upper, lower, final),
        rails,
        policy,
    )


def interval_z(upper: float, early: bool, policy: OnlineConfig) -> tuple[float, str]:
    """The z of the lift's interval: the efficacy boundary (a repeated confidence interval, valid whenever it is
    read); before the minimum duration no alpha is spent, so only a pointwise interval can be shown."""
    return (float(ndtri(1.0 - policy.alpha)), "pointwise") if early else (upper, "repeated")


def verdict_at(
    eff: Effect, upper: float, lower: float, final: bool, hours: float, rails: list[Guardrail], policy: OnlineConfig
) -> tuple[Verdict, str]:
    """The rule of one look, given its boundaries: a broken guardrail stops; above the efficacy boundary promotes
    (after the minimum duration, with every guardrail shown non-inferior); below the lower boundary stops, for harm
    when the challenger is doing worse (at any time), for futility otherwise (after the minimum duration); at the
    final look anything else keeps the champion."""
    early = hours < policy.min_duration_hours
    z_ci, kind = interval_z(upper, early and not final, policy)
    lo, hi = eff.lift_interval(z_ci, z_ci)
    lift = f"lift {eff.lift:+.1%} ({kind} {1 - 2 * policy.alpha:.0%} CI [{lo:+.1%}, {hi:+.1%}]), z {eff.z:+.2f}"
    held = f"held until the minimum duration of {policy.min_duration_hours:g} h ({hours:.1f} h so far)"
    broken = [g for g in rails if g.status == "violated"]
    if broken:
        return "reject", "stopped: guardrail broken: " + "; ".join(g.detail for g in broken)
    if eff.z >= upper:
        if early and not final:
            return "continue", f"continue: {lift} above the efficacy boundary {upper:+.2f}, promotion {held}"
        unsure = [g for g in rails if g.status == "not_shown"]
        if unsure:
            text = "; ".join(g.detail for g in unsure)
            if final:
                return "reject", f"rejected: {lift} is significant, but non-inferiority was not shown for: {text}"
            return "continue", f"continue: {lift} is significant; waiting to show non-inferiority for: {text}"
        return "promote", f"promote: {lift} above the efficacy boundary {upper:+.2f}"
    if eff.z <= lower and eff.z < 0:
        return "reject", (
            f"stopped for harm: the challenger is doing worse than the champion, {lift} below the harm/futility "
            f"boundary {lower:+.2f}"
        )
    if final:
        return "reject", f"horizon reached: {lift} below the final boundary {upper:+.2f}; the champion stays"
    if eff.z <= lower:
        if not early:
            return "reject", (
                f"stopped for futility: {lift} below the lower boundary {lower:+.2f}; the planned "
                f"{policy.mde:+.0%} is out of reach, the champion stays"
            )
        return "continue", f"continue: {lift} below the futility boundary {lower:+.2f}, {held}"
    return "continue", f"continue: {lift} between the boundaries [{lower:+.2f}, {upper:+.2f}]"


def _record(
    exp: Experiment,
    champion: ArmUsers,
    challenger: ArmUsers,
    now: datetime,
    hours: float,
    trigger: str,
    verdict: Verdict,
    reason: str,
    srm: float,
    stats: tuple[Effect, float, float, float, bool] | None,
    rails: list[Guardrail],
    policy: OnlineConfig,
) -> Outcome:
    nan = float("nan")
    eff, fraction, upper, lower, final = stats or (None, exp.looks[-1].fraction if exp.looks else 0.0, nan, nan, True)
    efficacy = hours >= policy.min_duration_hours or final
    low, high = eff.lift_interval(*[interval_z(upper, not efficacy, policy)[0]] * 2) if eff else (nan, nan)
    a, b = champion.counts(), challenger.counts()
    entry = Look(
        now.isoformat(),
        trigger,
        hours,
        fraction,
        eff.z if eff else nan,
        upper,
        lower,
        final,
        eff.lift if eff else nan,
        low,
        high,
        (a.users, b.users),
        (a.impressions, b.impressions),
        (a.likes, b.likes),
        verdict,
        reason,
        efficacy,
    )
    exp.looks.append(entry)
    return Outcome(verdict, reason, entry, rails, srm, _progress(fraction, hours))


def decide_online(offline: Decision, outcome: Outcome, exp: Experiment, policy: GateConfig) -> Decision:
    """The challenger's offline decision (same split, against the same champion) joined with this look.

    With `replace_offline_win`, the offline "win" check is kept for the record and the win is the online test's
    to give; every other offline check binds. The online checks say where the test stands."""
    informational = ("win",) if policy.online.replace_offline_win else ()
    offline_checks = [
        Check(
            c.name,
            c.holds or c.name in informational,
            c.value,
            c.threshold,
            c.detail + (" (offline, informational: decided online)" if c.name in informational else ""),
        )
        for c in offline.checks
    ]
    lk = outcome.look
    online = [
        Check(
            "online_test",
            outcome.verdict == "promote",
            lk.z if lk else None,
            lk.upper if lk else None,
            f"online: {outcome.reason} ({outcome.progress})",
        )
    ]
    if outcome.srm_p is not None:
        online.append(
            Check(
                "online_srm",
                outcome.srm_p >= policy.online.srm_alpha,
                outcome.srm_p,
                policy.online.srm_alpha,
                f"sample ratio: chi-square p {outcome.srm_p:.3g}",
            )
        )
    online += [
        Check(
            f"online_guardrail:{g.name}",
            g.status in ("ok", "not_run"),
            g.value,
            g.margin,
            g.detail + ("" if g.status == "ok" else f" ({g.status.replace('_', ' ')})"),
        )
        for g in outcome.guardrails
    ]
    numbers = {**offline.numbers, **online_numbers(exp, outcome)}
    if not all(c.passed for c in offline_checks):
        return Decision("reject", offline_checks + online, numbers, offline.skipped)
    return Decision(outcome.verdict, offline_checks + online, numbers, offline.skipped)


def online_numbers(exp: Experiment, outcome: Outcome) -> dict[str, float | int | str | None]:
    """The numbers of the test so far, flat (for the decision JSON, the run's metrics and the version page)."""
    out: dict[str, float | int | str | None] = {
        "online_experiment": exp.id,
        "online_looks": sum(not math.isnan(lk.upper) for lk in exp.looks),
        "online_progress": outcome.progress,
        "online_verdict": outcome.verdict,
        "online_srm_p": outcome.srm_p,
    }
    if exp.plan is not None:
        out.update(
            online_planned_users=exp.plan.users,
            online_planned_impressions=exp.plan.impressions,
            online_planned_hours=exp.plan.hours,
            online_baseline_like_rate=exp.plan.baseline_rate,
            online_plan_source=exp.plan.source,
        )
    lk = outcome.look or (exp.looks[-1] if exp.looks else None)
    if lk is not None:
        out.update(
            online_fraction=lk.fraction,
            online_z=lk.z,
            online_upper=lk.upper,
            online_lower=lk.lower,
            online_lift=lk.lift,
            online_lift_low=lk.lift_low,
            online_lift_high=lk.lift_high,
            online_hours=lk.hours,
            online_champion_users=lk.users[0],
            online_challenger_users=lk.users[1],
            online_champion_impressions=lk.impressions[0],
            online_challenger_impressions=lk.impressions[1],
            online_champion_likes=lk.likes[0],
            online_challenger_likes=lk.likes[1],
        )
    return out


def looks_table(exp: Experiment) -> str:
    """The looks so far as a markdown table (for the model version's description and the run)."""
    rows = [
        "| look | at | hours | t | z | lower | upper | lift [repeated CI] | users | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, lk in enumerate(exp.looks, 1):
        rows.append(
            f"| {i} ({lk.trigger}) | {lk.at[:16]} | {lk.hours:.1f} | {lk.fraction:.2f} | {lk.z:+.2f} | "
            f"{lk.lower:+.2f} | {lk.upper:+.2f} | {lk.lift:+.1%} [{lk.lift_low:+.1%}, {lk.lift_high:+.1%}] | "
            f"{lk.users[0]} / {lk.users[1]} | {lk.verdict} |"
        )
    return "\n".join(rows)


def looks_figure(exp: Experiment) -> Figure:
    """The z statistic at each look against its efficacy and harm/futility boundaries, by information fraction."""
    from matplotlib.figure import Figure  # only where a figure is drawn: deciding needs no matplotlib

    looks = [lk for lk in exp.looks if not math.isnan(lk.upper)]
    t = [lk.fraction for lk in looks]
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    ax.plot(t, [min(lk.upper, 8.0) for lk in looks], "-", color="tab:green", label="efficacy boundary (promote)")
    ax.plot(t, [max(lk.lower, -8.0) for lk in looks], "-", color="tab:red", label="harm/futility boundary (stop)")
    ax.plot(t, [lk.z for lk in looks], "o-", color="black", ms=4, label="z (like rate, users as unit)")
    ax.axvline(1.0, color="grey", ls=":", lw=0.8)
    ax.axhline(0.0, color="grey", lw=0.5)
    last = exp.looks[-1] if exp.looks else None
    title = f"{exp.id}: {last.verdict if last else 'no look yet'} after {len(looks)} looks"
    ax.set(xlabel="information fraction (1 = planned sample)", ylabel="z", title=title, ylim=(-6, 6))
    ax.set_xlim(0, max(1.05, max(t, default=1.0) + 0.05))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
