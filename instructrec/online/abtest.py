"""Online A/B testing: a stable traffic split and the statistics the gate reads.

Users, not requests, are randomised: an arm is a deterministic hash of
(experiment id, user id), so a user sees one model for the whole experiment,
in every process and after every restart, and each challenger gets a fresh
split (its version is part of the experiment id). Users are therefore also the
unit of analysis: a user's impressions are correlated (people differ in how
often they like anything), so a rate over impressions is a ratio of per-user
sums, and its variance comes from those sums by the delta method (Deng,
Knoblich & Lu, KDD 2018), never from impressions taken as independent trials.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import betaln

Arm = Literal["champion", "challenger"]
CHAMPION_ARM: Arm = "champion"
CHALLENGER_ARM: Arm = "challenger"


def bucket(user_id: str, experiment: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment, user)."""
    digest = hashlib.sha256(f"{experiment}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arm(user_id: str, experiment: str, challenger_share: float) -> Arm:
    """The user's arm; with no challenger running (share 0) everyone gets the champion."""
    if not 0.0 <= challenger_share <= 1.0:
        raise ValueError(f"challenger_share must be in [0, 1], got {challenger_share}")
    return CHALLENGER_ARM if bucket(user_id, experiment) < challenger_share else CHAMPION_ARM


def experiment_id(experiment: str, challenger_version: str | None) -> str:
    """The split's salt: a fresh randomisation per challenger, so what one challenger did to its users (sessions
    persist) does not carry into the next test through the same users."""
    return f"{experiment}:v{challenger_version}" if challenger_version else experiment


@dataclass(frozen=True)
class ArmUsers:
    """One arm's traffic with one row per user (the randomised unit): what user-level inference needs."""

    impressions: np.ndarray  # items shown to the user
    likes: np.ndarray  # liked shown items (like, more like this)
    dislikes: np.ndarray  # disliked shown items (dislike, less like this)
    requests: np.ndarray  # lists requested
    errors: np.ndarray  # requests that failed after the user was assigned to this arm
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per served request, for the p95 guardrail

    @property
    def users(self) -> int:
        return len(self.impressions)

    def counts(self) -> ArmCounts:
        return ArmCounts(self.users, int(self.impressions.sum()), int(self.likes.sum()))

    @classmethod
    def empty(cls) -> ArmUsers:
        z = np.zeros(0)
        return cls(z, z, z, z, z)


@dataclass(frozen=True)
class Ratio:
    """sum(numerator) / sum(denominator) over users, with its delta-method variance."""

    value: float
    variance: float
    users: int

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> Ratio:
    """A ratio metric under user randomisation: Var(Y/X) ~ (s_y^2 - 2 r s_xy + r^2 s_x^2) / (n mean_x^2) with
    per-user sums Y, X (Deng et al. 2018, section 3)."""
    n = len(denominator)
    x, y = np.asarray(denominator, dtype=float), np.asarray(numerator, dtype=float)
    if n == 0 or x.sum() == 0:
        return Ratio(float("nan"), float("inf"), n)
    r = y.sum() / x.sum()
    if n < 2:
        return Ratio(float(r), float("inf"), n)
    linear = y - r * x  # the per-user linearisation: its variance is the ratio's, up to n mean_x^2
    return Ratio(float(r), float(linear.var(ddof=1) / (n * x.mean() ** 2)), n)


@dataclass(frozen=True)
class Effect:
    """Challenger minus champion on a ratio metric: difference, its standard error, the z statistic."""

    champion: Ratio
    challenger: Ratio

    @property
    def diff(self) -> float:
        return self.challenger.value - self.champion.value

    @property
    def se(self) -> float:
        return math.sqrt(self.champion.variance + self.challenger.variance)

    @property
    def z(self) -> float:
        se = self.se
        return self.diff / se if 0.0 < se < math.inf else 0.0

    @property
    def information(self) -> float:
        se = self.se
        return 1.0 / se**2 if 0.0 < se < math.inf else 0.0

    @property
    def lift(self) -> float:
        """Relative difference challenger / champion - 1."""
        return self.challenger.value / self.champion.value - 1.0 if self.champion.value > 0 else float("nan")

    def lift_interval(self, z_low: float, z_high: float) -> tuple[float, float]:
        """(lift - z_low * se, lift + z_high * se) with the ratio's delta-method se."""
        a, b = self.champion, self.challenger
        if not a.value > 0:
            return float("nan"), float("nan")
        se = math.sqrt(b.variance / a.value**2 + b.value**2 * a.variance / a.value**4)
        return self.lift - z_low * se, self.lift + z_high * se


@dataclass(frozen=True)
class Adjusted:
    """A CUPED-adjusted difference in a ratio metric: the same difference, less the part its pre-experiment
    covariate predicts (Deng, Xu, Kohavi & Walker, WSDM 2013), on the delta-method linearisation of each arm."""

    raw: Effect
    diff: float
    se: float
    theta: float  # the pooled regression coefficient of the linearised outcome on the covariate

    @property
    def z(self) -> float:
        return self.diff / self.se if 0.0 < self.se < math.inf else 0.0

    @property
    def variance_ratio(self) -> float:
        """Adjusted variance / unadjusted: the share of the users (or time) that the same information needs."""
        return self.se**2 / self.raw.se**2 if 0.0 < self.raw.se < math.inf else float("nan")


def _linear(num: np.ndarray, den: np.ndarray, rate: float) -> np.ndarray:
    """Each user's contribution to a ratio's deviation (the delta-method linearisation), 0 for users without
    traffic: the ratio's estimate moves by the mean of these."""
    mean = den.mean() if len(den) and den.sum() > 0 else 1.0
    return (num - rate * den) / mean


def cuped(
    champion: tuple[np.ndarray, np.ndarray],
    challenger: tuple[np.ndarray, np.ndarray],
    pre_champion: tuple[np.ndarray, np.ndarray],
    pre_challenger: tuple[np.ndarray, np.ndarray],
) -> Adjusted:
    """Challenger minus champion on a ratio metric (numerator, denominator per user), adjusted by each user's
    same ratio before the experiment (aligned rows; zeros for a user with no earlier traffic, who then counts at
    the pooled pre-experiment rate). The covariate cannot depend on the arm, so the adjustment removes variance,
    never adds bias."""
    raw = Effect(ratio(*champion), ratio(*challenger))
    pre_num = np.concatenate([pre_champion[0], pre_challenger[0]]).astype(float)
    pre_den = np.concatenate([pre_champion[1], pre_challenger[1]]).astype(float)
    pre_rate = pre_num.sum() / pre_den.sum() if pre_den.sum() > 0 else 0.0
    xs = [_linear(np.asarray(n, float), np.asarray(d, float), pre_rate) for n, d in (pre_champion, pre_challenger)]
    ys = [
        _linear(np.asarray(n, float), np.asarray(d, float), arm.value)
        for (n, d), arm in ((champion, raw.champion), (challenger, raw.challenger))
    ]
    xc = np.concatenate([x - x.mean() for x in xs])  # within-arm centring: theta from the pooled within-arm fit
    yc = np.concatenate([y - y.mean() for y in ys])
    theta = float(xc @ yc / (xc @ xc)) if xc @ xc > 0 else 0.0
    diff = raw.diff - theta * (xs[1].mean() - xs[0].mean())
    variance = sum(float(np.var(y - theta * x, ddof=1)) / len(y) for x, y in zip(xs, ys, strict=True))
    return Adjusted(raw, diff, math.sqrt(variance), theta)


@dataclass(frozen=True)
class ArmCounts:
    users: int
    impressions: int  # recommended items shown
    likes: int  # like + more_like_this on shown items

    @property
    def like_rate(self) -> float:
        return self.likes / self.impressions if self.impressions else float("nan")


def srm_p_value(champion_users: int, challenger_users: int, challenger_share: float) -> float:
    """An always-valid p-value of the users per arm against the configured split, safe to read at every look:
    1 / the Bayes factor of a Beta(1, 1) mixture against the configured share (a mixture sequential probability
    ratio test on the binomial count; Lindon & Malek 2020). A fixed-level chi-square read hourly would flag a fair
    split sooner or later."""
    n, x = champion_users + challenger_users, challenger_users
    if n == 0 or not 0.0 < challenger_share < 1.0:
        return 1.0
    log_bf = betaln(1.0 + x, 1.0 + n - x) - (x * math.log(challenger_share) + (n - x) * math.log1p(-challenger_share))
    return float(min(1.0, math.exp(-log_bf)))
