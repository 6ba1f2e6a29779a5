"""The white-cell differential: counts per type of one image, and of one slide (its images together)
with percentages and their exact 95 % binomial confidence intervals (Clopper-Pearson, the intervals
Rümke's table gives for a differential of 100, 200 or more cells).

As a manual differential reports them: the percentages are of the classified leukocytes
(neutrophils, lymphocytes, monocytes, eosinophils, basophils, immature granulocytes); nucleated red
cells (erythroblasts) are not leukocytes and are reported per 100 leukocytes; unclassified cells
are counted, never given a type, and their share of the typed cells is reported.
"""

from __future__ import annotations

import math

from edgehema.smear.tally import Tally, count_types

#: Leukocyte types, in the order a differential lists them.
LEUKOCYTES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig")
NRBC = "erythroblast"
UNCLASSIFIED = "unclassified"
TYPES = (*LEUKOCYTES, NRBC, UNCLASSIFIED)
#: A differential counts at least this many leukocytes (ICSH, CLSI H20-A2: 100 or, better, 200).
MIN_LEUKOCYTES = 100
#: Unclassified cells beyond this share of the typed cells (and at least MIN_UNCLASSIFIED of them)
#: mean the slide holds cells unlike the trained types (or a detector fooled): a person looks.
MANY_UNCLASSIFIED = 0.10
MIN_UNCLASSIFIED = 2

FLAG_TEXT = {
    "immature_granulocytes_present": "immature granulocytes seen ({ig}): review the smear",
    "nucleated_red_cells_present": "nucleated red cells seen ({nrbc}, {nrbc_per_100:.1f} per 100 leukocytes): review; "
                                   "correct the white-cell count for them",
    "many_unclassified": "{unclassified} of {typed} white cells unlike any trained type ({share:.0%}): review them",
    "too_few_leukocytes": "only {leukocytes} leukocytes classified (a differential counts at least 100): count more fields",
}


def image_counts(detections: list[dict]) -> dict[str, int]:
    """Counts per type of one image's white-cell detections (result dicts with ``wbc_type``)."""
    return count_types(detections, "wbc", "wbc_type", TYPES)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    return min(1.0, sum(math.exp(base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
                        for i in range(0, k + 1)))


def _solve(f, target: float) -> float:
    """p in [0, 1] where the decreasing function f(p) equals target (bisection to 1e-7)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion k / n, as fractions: the lower bound
    where P(X >= k) = a/2, i.e. P(X <= k - 1) = 1 - a/2; the upper where P(X <= k) = a/2 (both
    decrease with p)."""
    if n <= 0:
        return 0.0, 1.0
    a = (1 - level) / 2
    lower = 0.0 if k == 0 else _solve(lambda p: _binomial_cdf(k - 1, n, p), 1 - a)
    upper = 1.0 if k == n else _solve(lambda p: _binomial_cdf(k, n, p), a)
    return lower, upper


class Differential(Tally):
    """Counts per type over any number of images (one slide), and what a laboratory reads off them."""

    CLASSES = TYPES

    @property
    def leukocytes(self) -> int:
        return sum(self.counts[t] for t in LEUKOCYTES)

    def table(self) -> dict[str, dict]:
        """Per type: count, percent and 95 % interval (of the leukocytes; erythroblasts per 100
        leukocytes; unclassified as a share of the typed cells)."""
        n, out = self.leukocytes, {}
        for t in TYPES:
            k = self.counts[t]
            if t in LEUKOCYTES:
                lo, hi = binomial_ci(k, n)
                out[t] = {"count": k, "percent": round(100 * k / n, 1) if n else None,
                          "ci95": [round(100 * lo, 1), round(100 * hi, 1)] if n else None}
            elif t == NRBC:
                out[t] = {"count": k, "per_100_leukocytes": round(100 * k / n, 1) if n else None}
            else:
                out[t] = {"count": k, "percent_of_typed": round(100 * k / self.typed, 1) if self.typed else None}
        return out

    def flags(self, minimum: int = MIN_LEUKOCYTES) -> dict[str, str]:
        c, n = self.counts, self.leukocytes
        out = {}
        if c["ig"]:
            out["immature_granulocytes_present"] = FLAG_TEXT["immature_granulocytes_present"].format(ig=c["ig"])
        if c[NRBC]:
            out["nucleated_red_cells_present"] = FLAG_TEXT["nucleated_red_cells_present"].format(
                nrbc=c[NRBC], nrbc_per_100=100 * c[NRBC] / n if n else float("inf"))
        if c[UNCLASSIFIED] >= MIN_UNCLASSIFIED and c[UNCLASSIFIED] > MANY_UNCLASSIFIED * self.typed:
            out["many_unclassified"] = FLAG_TEXT["many_unclassified"].format(
                unclassified=c[UNCLASSIFIED], typed=self.typed, share=c[UNCLASSIFIED] / self.typed)
        if minimum and n < minimum:
            out["too_few_leukocytes"] = FLAG_TEXT["too_few_leukocytes"].format(leukocytes=n)
        return out
