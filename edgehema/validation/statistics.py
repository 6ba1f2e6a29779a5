"""The statistics of method verification, each written once and tested against a published worked
example or an independent computation (tests/test_validation.py).

No maintained Python library does Passing-Bablok correctly: ``methcomp`` 1.0.0 (MIT, 2020) takes
the median of an odd number of slopes at ``(n + 1) / k + 2`` and the geometric mean of the two
middle ones for an even number, and shifts by the negative slopes rather than those below -1;
scipy and statsmodels have no Passing-Bablok. So it is here, as Passing & Bablok (1983) define it
and as R's ``mcr`` (``mcreg(method.reg = "PaBa", method.ci = "analytical")``) computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Spread:
    """Replicates of one sample: n, mean, SD (n - 1) and CV %."""

    n: int
    mean: float
    sd: float

    @property
    def cv_percent(self) -> float | None:
        return None if self.mean == 0 else 100.0 * self.sd / abs(self.mean)


def spread(values) -> Spread:
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return Spread(len(v), float(v.mean()), sd)


def carryover_percent(high, low) -> float:
    """ICSH (Briggs et al. 2014): a high sample three times, then a low one three times;
    carry-over % = (L1 - L3) / (H3 - L3) x 100."""
    h1, h2, h3 = high
    l1, l2, l3 = low
    if h3 - l3 <= 0:
        raise ValueError("the high sample's third result is not above the low sample's third")
    return (l1 - l3) / (h3 - l3) * 100.0


@dataclass(frozen=True)
class Line:
    """An ordinary least-squares line y = intercept + slope * x and its r squared."""

    slope: float
    intercept: float
    r2: float

    def at(self, x):
        return self.intercept + self.slope * np.asarray(x, dtype=float)


def least_squares(x, y) -> Line:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a line needs at least two different x values")
    xm, ym = x.mean(), y.mean()
    slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    intercept = float(ym - slope * xm)
    ss_tot = float(((y - ym) ** 2).sum())
    ss_res = float(((y - (intercept + slope * x)) ** 2).sum())
    return Line(slope, intercept, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)


@dataclass(frozen=True)
class PassingBablok:
    """Slope and intercept with their (1 - alpha) confidence intervals."""

    n: int
    slope: float
    slope_ci: tuple[float, float]
    intercept: float
    intercept_ci: tuple[float, float]


def passing_bablok(x, y, alpha: float = 0.05) -> PassingBablok:
    """Passing H, Bablok W. J Clin Chem Clin Biochem 21:709-720, 1983 (the analytical intervals).

    The slope is the median of all pairwise slopes shifted by K, the number of slopes below -1
    (so that the estimate does not depend on which method is x); pairs with both differences zero
    and slopes of exactly -1 are left out; a vertical pair counts as an infinite slope of its sign.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    if n < 3:
        raise ValueError("Passing-Bablok needs at least 3 pairs")
    i, j = np.triu_indices(n, k=1)
    dx, dy = x[j] - x[i], y[j] - y[i]
    keep = ~((dx == 0) & (dy == 0))
    dx, dy = dx[keep], dy[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(dx != 0, dy / np.where(dx != 0, dx, 1.0), np.copysign(np.inf, dy))
    s = np.sort(s[s != -1.0])
    m = len(s)
    if m == 0:
        raise ValueError("all pairs are identical")
    k = int((s < -1).sum())
    # 1-based order statistics of the paper, shifted by K.
    if m % 2:
        slope = float(s[(m + 1) // 2 + k - 1])
    else:
        slope = float(0.5 * (s[m // 2 + k - 1] + s[m // 2 + k]))
    c = NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    m1 = int(round((m - c) / 2.0))
    m2 = m - m1 + 1
    lo_i, hi_i = max(m1 + k - 1, 0), min(m2 + k - 1, m - 1)
    slope_lo, slope_hi = float(s[lo_i]), float(s[hi_i])
    intercept = float(np.median(y - slope * x))
    # The intercept's interval follows from the slope's: the steeper slope gives the lower intercept.
    icpt_lo = float(np.median(y - slope_hi * x))
    icpt_hi = float(np.median(y - slope_lo * x))
    return PassingBablok(n, slope, (slope_lo, slope_hi), intercept, (icpt_lo, icpt_hi))


@dataclass(frozen=True)
class BlandAltman:
    """Bias (mean difference) and the 95 % limits of agreement, bias +- 1.96 SD."""

    n: int
    bias: float
    sd: float

    @property
    def loa(self) -> tuple[float, float]:
        return self.bias - 1.96 * self.sd, self.bias + 1.96 * self.sd


def differences(test, reference, relative: bool) -> np.ndarray:
    """test - reference; relative: in percent of the pair's mean (Bland & Altman 1999)."""
    t = np.asarray(test, dtype=float)
    r = np.asarray(reference, dtype=float)
    if not relative:
        return t - r
    mean = (t + r) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean != 0, (t - r) / mean * 100.0, 0.0)


def bland_altman(test, reference, relative: bool = False) -> BlandAltman:
    """Bland JM, Altman DG. Lancet 1986;i:307-310."""
    d = differences(test, reference, relative)
    if len(d) < 2:
        raise ValueError("limits of agreement need at least 2 pairs")
    return BlandAltman(len(d), float(d.mean()), float(d.std(ddof=1)))
