"""Group-sequential boundaries: Lan-DeMets spending by information fraction, for looks at any time.

The online test reads a standardised statistic Z_k at look k, with information
I_k = 1 / se_k^2 and information fraction t_k = I_k / I_max. On the score scale
S_k = Z_k * sqrt(t_k) the looks are a Brownian motion with drift theta * t
(theta = 0 under no difference), so the density of the paths that have not yet
stopped is carried from look to look by numerical integration (Armitage,
McPherson & Rowe 1969; the grid and Simpson weights of Jennison & Turnbull 2000,
ch. 19). Each new boundary is solved so that the chance of crossing it first at
this look equals the increment of the spending function: looks may be irregular
and unplanned, and the error rate spent by t is the spending function's value,
whatever happened before (Lan & DeMets 1983).

Two boundaries, each computed on its own paths:
- the efficacy (upper) boundary spends alpha under theta = 0, ignoring the lower
  one (non-binding: stopping for harm or futility can only lower the false
  promotion rate below alpha);
- the harm/futility (lower) boundary spends beta under the planned effect
  (theta_1), with the efficacy boundary binding, so a challenger as good as
  planned is stopped by it with chance beta; the two meet at the final look.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

Spending = Literal["obrien_fleming", "pocock"]
GRID_R = 8  # Jennison & Turnbull's grid parameter: 6r - 1 points per look (accurate to ~1e-4 with steps >= 0.01)
_FAR = 40.0  # "no boundary" on the score scale (a crossing probability below 1e-300)


def spend(kind: Spending, total: float, t: float) -> float:
    """Error spent by information fraction t: O'Brien-Fleming-like or Pocock-like (Lan & DeMets 1983)."""
    t = min(max(t, 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if kind == "obrien_fleming":
        return float(2.0 * (1.0 - ndtr(ndtri(1.0 - total / 2.0) / math.sqrt(t))))
    if kind == "pocock":
        return total * math.log(1.0 + (math.e - 1.0) * t)
    raise ValueError(f"unknown spending function {kind!r} (obrien_fleming or pocock)")


def _root(f: Callable[[float], float], lo: float, hi: float, xtol: float = 1e-9) -> float:
    root = brentq(f, lo, hi, xtol=xtol)
    return float(root[0] if isinstance(root, tuple) else root)


def _grid(mean: float, sd: float, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Points and Simpson weights over (lo, hi), dense where the normal(mean, sd) mass is."""
    r = GRID_R
    i = np.arange(1, 6 * r)
    u = np.where(
        i < r,
        -3.0 - 4.0 * np.log(r / np.maximum(i, 1)),
        np.where(i <= 5 * r, -3.0 + 3.0 * (i - r) / (2.0 * r), 3.0 + 4.0 * np.log(r / np.maximum(6 * r - i, 1))),
    )
    x = mean + sd * u
    x = np.concatenate(([lo] if lo > x[0] else [], x[(x > lo) & (x < hi)], [hi] if hi < x[-1] else []))
    if len(x) < 2:
        x = np.array([lo, hi])
    mid = (x[:-1] + x[1:]) / 2.0
    d = np.diff(x)
    pts = np.empty(2 * len(x) - 1)
    pts[0::2], pts[1::2] = x, mid
    w = np.zeros_like(pts)
    w[0:-1:2] += d / 6.0
    w[2::2] += d / 6.0
    w[1::2] = 4.0 * d / 6.0
    return pts, w


@dataclass
class PathDensity:
    """The density of the score over the paths still running after the last look, under drift `theta`."""

    theta: float
    t: float = 0.0
    x: np.ndarray | None = None  # grid points (score scale)
    h: np.ndarray | None = None  # density times Simpson weight

    def cross(self, t: float, c: float, side: int) -> tuple[float, float]:
        """(chance that a running path first lands above c (side +1) or below c (side -1) at fraction t,
        the derivative of that chance in c)."""
        if self.x is None or self.h is None:  # the first look: the score is normal(theta t, t)
            q0 = (c - self.theta * t) / math.sqrt(t)
            dens0 = math.exp(-0.5 * q0 * q0) / math.sqrt(2.0 * math.pi * t)
            return float(ndtr(-side * q0)), -side * dens0
        dt = t - self.t
        root = math.sqrt(dt)
        q = (c - self.x - self.theta * dt) / root
        tail, dens = ndtr(-side * q), np.exp(-0.5 * q * q) / (root * math.sqrt(2.0 * math.pi))
        return float(self.h @ tail), float(-side * (self.h @ dens))

    def solve(self, t: float, target: float, side: int, guess: float | None = None) -> float:
        """The boundary (score scale) whose first-crossing chance at t is `target`; +-_FAR where nothing is spent.
        Newton steps on the log chance from `guess`, bisection where they stall."""
        span = _FAR * max(1.0, math.sqrt(t))
        if target <= 1e-15:
            return side * span
        lo, hi = self.theta * t - span, self.theta * t + span
        if self.cross(t, lo if side > 0 else hi, side)[0] <= target:  # asked for more than is left
            return lo if side > 0 else hi
        c = guess if guess is not None and lo < guess < hi else self.theta * t + side * math.sqrt(t) * 2.0
        for _ in range(12):
            p, dp = self.cross(t, c, side)
            if p <= 0.0 or dp == 0.0:
                break
            step = (math.log(p) - math.log(target)) * p / dp
            c = min(max(c - step, lo), hi)
            if abs(step) < 1e-9:
                return c
        return _root(lambda v: self.cross(t, v, side)[0] - target, lo, hi)

    def advance(self, t: float, lo: float, hi: float) -> None:
        """Carry the density to fraction t, keeping the paths inside (lo, hi) on the score scale."""
        sd = math.sqrt(t - self.t) if self.x is not None else math.sqrt(t)
        pts, w = _grid(self.theta * t, math.sqrt(t), lo, hi)
        if self.x is None or self.h is None:
            dens = np.exp(-0.5 * ((pts - self.theta * t) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
        else:
            k = (pts[:, None] - self.x[None, :] - self.theta * (t - self.t)) / sd
            dens = (np.exp(-0.5 * k * k) / (sd * math.sqrt(2 * math.pi))) @ self.h
        self.x, self.h, self.t = pts, dens * w, t


@dataclass
class Boundaries:
    """Efficacy and harm/futility boundaries of one experiment, one look at a time (z scale)."""

    alpha: float  # one-sided false promotion rate
    beta: float  # chance that a challenger as good as planned is stopped at the lower boundary
    theta: float  # the planned effect as the drift of the score at t = 1 (z scale)
    alpha_spending: Spending = "obrien_fleming"
    beta_spending: Spending = "obrien_fleming"
    fractions: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    efficacy: list[bool] = field(default_factory=list)  # whether each look could promote
    alpha_spent: float = 0.0

    def __post_init__(self) -> None:
        self._null, self._alt = PathDensity(0.0), PathDensity(self.theta)

    def next(self, t: float, final: bool = False, efficacy: bool = True) -> tuple[float, float]:
        """(upper, lower) z boundaries at a look with information fraction t > the last one. A final look spends
        what is left of alpha and beta, and its two boundaries meet. A look with efficacy False (before a minimum
        duration) spends no alpha (its upper boundary is out of reach); the next efficacy look spends what the
        function allows by then, so alpha is never lost, only saved."""
        last = self.fractions[-1] if self.fractions else 0.0
        if t <= last:
            raise ValueError(f"information fraction {t:.4f} does not exceed the last look's {last:.4f}")
        s_now = 1.0 if final else t
        a = spend(self.alpha_spending, self.alpha, s_now) - self.alpha_spent if efficacy or final else 0.0
        b = spend(self.beta_spending, self.beta, s_now) - spend(self.beta_spending, self.beta, last)
        root = math.sqrt(t)
        c_up = self._null.solve(t, a, +1, self.upper[-1] * root if self.upper else None)
        if a > 0.0:
            self.alpha_spent += self._null.cross(t, c_up, +1)[0]
        c_lo = min(self._alt.solve(t, b, -1, self.lower[-1] * root if self.lower else None), c_up)
        if final:
            c_lo = c_up
        if a > 0.0:  # a look that spends no alpha truncates nothing on the null paths: carry them on unchanged
            self._null.advance(t, -_FAR * math.sqrt(t) - abs(self.theta), c_up)
        self._alt.advance(t, c_lo, c_up)
        self.fractions.append(t)
        self.efficacy.append(efficacy or final)
        self.upper.append(c_up / root)
        self.lower.append(c_lo / root)
        return self.upper[-1], self.lower[-1]

    @classmethod
    def replay(
        cls, fractions: list[float], finals: list[bool] | None = None, efficacy: list[bool] | None = None, **design
    ) -> Boundaries:
        """The same boundaries again from the fractions (and kinds) of earlier looks: they depend on nothing else."""
        out = cls(**design)
        for i, t in enumerate(fractions):
            out.next(t, bool(finals and finals[i]), efficacy[i] if efficacy else True)
        return out


def fixed_sample_z(alpha: float, power: float) -> float:
    """z_(1-alpha) + z_(power): the planned effect in standard errors of a single-look test."""
    return float(ndtri(1.0 - alpha) + ndtri(power))


def inflation(
    alpha: float,
    power: float,
    looks: int = 10,
    alpha_spending: Spending = "obrien_fleming",
    beta_spending: Spending = "obrien_fleming",
) -> float:
    """How much more information than a single-look test the sequential design needs for the same power, on
    `looks` equally spaced looks: the factor at which the beta-spending lower boundary meets the upper one at the
    last look (Jennison & Turnbull 2000, section 7.2)."""
    z = fixed_sample_z(alpha, power)

    def gap(r: float) -> float:
        b = Boundaries(alpha, 1.0 - power, z * math.sqrt(r), alpha_spending, beta_spending)
        for k in range(1, looks):
            b.next(k / looks)
        t = 1.0
        c_up = b._null.solve(t, spend(alpha_spending, alpha, 1.0) - b.alpha_spent, 1)
        target = spend(beta_spending, 1.0 - power, 1.0) - spend(beta_spending, 1.0 - power, b.fractions[-1])
        return b._alt.solve(t, target, -1, c_up) - c_up

    return _root(gap, 1.0, 3.0, xtol=1e-5) if looks > 1 else 1.0


def first_crossing(
    bounds: Callable[[], Boundaries], fractions: list[float], theta: float, draws: int, seed: int
) -> dict[str, float]:
    """Monte-Carlo check of a design: the share of Brownian paths (drift theta) that cross each boundary first."""
    rng = np.random.default_rng(seed)
    t = np.asarray(fractions)
    inc = rng.standard_normal((draws, len(t))) * np.sqrt(np.diff(t, prepend=0.0)) + theta * np.diff(t, prepend=0.0)
    z = np.cumsum(inc, axis=1) / np.sqrt(t)
    b = bounds()
    for k, tk in enumerate(fractions):
        b.next(tk, final=k == len(fractions) - 1)
    up, lo = np.asarray(b.upper), np.asarray(b.lower)
    hit_up = np.where((z >= up).any(axis=1), (z >= up).argmax(axis=1), len(t))
    hit_lo = np.where((z <= lo).any(axis=1), (z <= lo).argmax(axis=1), len(t))
    return {"upper": float((hit_up < hit_lo).mean()), "lower": float((hit_lo < hit_up).mean())}
