"""Online A/B testing: a stable traffic split and the statistics the gate reads.

Users, not requests, are randomised: an arm is a deterministic hash of
(experiment id, user id), so a user sees one model for the whole experiment,
in every process and after every restart. The unit of the like rate is the
impression (one recommended item shown); the sample-ratio check counts users.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

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


@dataclass(frozen=True)
class ArmCounts:
    users: int
    impressions: int  # recommended items shown
    likes: int  # like + more_like_this on shown items

    @property
    def like_rate(self) -> float:
        return self.likes / self.impressions if self.impressions else float("nan")


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def srm_p_value(champion_users: int, challenger_users: int, challenger_share: float) -> float:
    """Chi-square goodness of fit (1 degree of freedom) of the users per arm against the configured split."""
    n = champion_users + challenger_users
    if n == 0 or not 0.0 < challenger_share < 1.0:
        return 1.0
    expected = (n * (1.0 - challenger_share), n * challenger_share)
    chi2 = sum((o - e) ** 2 / e for o, e in zip((champion_users, challenger_users), expected, strict=True))
    return math.erfc(math.sqrt(chi2 / 2.0))  # survival function of chi2 with 1 dof


def two_proportion_z(champion: ArmCounts, challenger: ArmCounts) -> tuple[float, float]:
    """(z, one-sided p) for H1: the challenger's like rate is higher (pooled standard error)."""
    n1, n2 = champion.impressions, challenger.impressions
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (champion.likes + challenger.likes) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:
        return 0.0, 1.0
    z = (challenger.like_rate - champion.like_rate) / se
    return z, _normal_sf(z)


def prob_better(champion: ArmCounts, challenger: ArmCounts, draws: int = 20000, seed: int = 0) -> float:
    """P(challenger's like rate > champion's) under independent Beta(1 + likes, 1 + misses) posteriors."""
    rng = np.random.default_rng(seed)
    a = rng.beta(1 + champion.likes, 1 + champion.impressions - champion.likes, draws)
    b = rng.beta(1 + challenger.likes, 1 + challenger.impressions - challenger.likes, draws)
    return float((b > a).mean())
