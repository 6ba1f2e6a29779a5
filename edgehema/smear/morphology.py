"""Red-cell morphology: counts per shape class of one image, and of one slide (its images together)
with percentages, their exact 95 % binomial intervals, and a grade per finding as the ICSH
recommends (Palmer L, Briggs C, McFadden S, et al. ICSH recommendations for the standardization of
nomenclature and grading of peripheral blood cell morphological features. Int J Lab Hematol
2015;37:287-303, doi:10.1111/ijlh.12327; schistocytes: Zini G, d'Onofrio G, Briggs C, et al. ICSH
recommendations for identification, diagnostic value, and quantitation of schistocytes. Int J Lab
Hematol 2012;34:107-116).

The grading is by the percentage of red cells showing the finding: 1+ (few), 2+ (moderate), 3+
(many). ICSH sets two scales: findings seen in health in small numbers and read off size or colour
(macrocytes, microcytes, hypochromic cells, and the summary terms anisocytosis and poikilocytosis)
grade 1+ at 11-20 %, 2+ at 21-50 %, 3+ above 50 %; the specific poikilocytes (spherocytes, target
cells, ovalocytes, elliptocytes, stomatocytes, teardrop cells, echinocytes / burr cells) grade 1+ at
5-20 %, 2+ at 21-50 %, 3+ above 50 %. Schistocytes are not graded but reported as a percentage of
at least 1,000 red cells; above 1 % they are a robust sign of thrombotic microangiopathy.
Below 1+ a finding is not reported (it is within what normal blood shows). These scales were
written without the paper's text at hand (docs/smear.md): compare them with your copy.

The percentages are of the red cells classified (unclassified cells and the leftover class
``uncategorised`` are counted, not graded). Grades need MIN_RED_CELLS classified red cells (ICSH's
count for schistocytes); with fewer the percentages are given and the slide is flagged. A slide with
more than UNRELIABLE_UNCLASSIFIED of its red cells unclassified gets no grade either (flag
``rbc_morphology_unreliable``): the classifier does not know such cells.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgehema.smear.differential import binomial_ci
from edgehema.smear.tally import Tally, count_types

NORMAL = "normal"
UNCLASSIFIED = "unclassified"
LEFTOVER = "uncategorised"
#: Shape classes (Chula RBC-12's, the classifier's), in the order a report lists them.
SHAPES = ("normal", "macrocyte", "microcyte", "hypochromia", "spherocyte", "target", "ovalocyte", "elliptocyte",
          "stomatocyte", "teardrop", "burr", "schistocyte", "uncategorised")
CLASSES = (*SHAPES, UNCLASSIFIED)


@dataclass(frozen=True)
class Finding:
    """One graded finding: the classes it counts, its grading scale, its LOINC term
    (Erythrocyte morphology panel 58408-6 of the manual differential panel 24318-8)."""

    name: str
    classes: tuple[str, ...]
    scale: str  # "size_colour" (11/21/50 %), "poikilocyte" (5/21/50 %) or "percent" (schistocytes)
    loinc: str
    loinc_name: str


#: Lower bounds (percent of red cells) of 1+, 2+, 3+; 3+ is "above" its bound.
SCALES = {"size_colour": (11.0, 21.0, 50.0), "poikilocyte": (5.0, 21.0, 50.0)}
#: Schistocytes above this percentage: clinically significant (ICSH 2012, adults).
SCHISTOCYTES_SIGNIFICANT = 1.0
MIN_RED_CELLS = 1000
#: Unclassified red cells beyond this share of the classified ones (and at least 10 of them): the
#: slide holds cells unlike the trained shapes, or the detector was fooled.
MANY_UNCLASSIFIED = 0.10
MIN_UNCLASSIFIED = 10
#: Beyond this share unclassified (three times the 5 % the shipped classifier leaves on its own val
#: and test cells) the slide is unlike what the classifier was trained on and its shapes are not to
#: be trusted: no grade, no finding flag. Measured: BCCD's crowded fields (another laboratory,
#: camera and magnification) leave 33 % unclassified and call a fifth of the rest schistocytes.
UNRELIABLE_UNCLASSIFIED = 0.15

_POIKILOCYTES = ("spherocyte", "target", "ovalocyte", "elliptocyte", "stomatocyte", "teardrop", "burr", "schistocyte")
FINDINGS = (
    Finding("anisocytosis", ("macrocyte", "microcyte"), "size_colour", "702-1", "Anisocytosis [Presence] in Blood by Light microscopy"),
    Finding("macrocytes", ("macrocyte",), "size_colour", "738-5", "Macrocytes [Presence] in Blood by Light microscopy"),
    Finding("microcytes", ("microcyte",), "size_colour", "741-9", "Microcytes [Presence] in Blood by Light microscopy"),
    Finding("hypochromia", ("hypochromia",), "size_colour", "728-6", "Hypochromia [Presence] in Blood by Light microscopy"),
    Finding("poikilocytosis", _POIKILOCYTES, "size_colour", "779-9", "Poikilocytosis [Presence] in Blood by Light microscopy"),
    Finding("spherocytes", ("spherocyte",), "poikilocyte", "802-9", "Spherocytes [Presence] in Blood by Light microscopy"),
    Finding("target_cells", ("target",), "poikilocyte", "10381-2", "Target cells [Presence] in Blood by Light microscopy"),
    Finding("ovalocytes", ("ovalocyte",), "poikilocyte", "774-0", "Ovalocytes [Presence] in Blood by Light microscopy"),
    Finding("elliptocytes", ("elliptocyte",), "poikilocyte", "11274-8", "Elliptocytes [Presence] in Blood by Light microscopy"),
    Finding("stomatocytes", ("stomatocyte",), "poikilocyte", "10380-4", "Stomatocytes [Presence] in Blood by Light microscopy"),
    Finding("teardrop_cells", ("teardrop",), "poikilocyte", "7791-7", "Dacrocytes [Presence] in Blood by Light microscopy"),
    Finding("burr_cells", ("burr",), "poikilocyte", "7790-9", "Burr cells [Presence] in Blood by Light microscopy"),
    Finding("schistocytes", ("schistocyte",), "percent", "800-3", "Schistocytes [Presence] in Blood by Light microscopy"),
)
#: LOINC's Erythrocyte morphology panel (the OBR of a slide's morphology message).
PANEL = ("58408-6", "Erythrocyte morphology panel - Blood")

FLAG_TEXT = {
    "schistocytes_present": "schistocytes {percent:.1f} % of {cells} red cells (ICSH: above 1 % suggests "
                            "thrombotic microangiopathy): review the smear",
    "present": "{name} {grade} ({percent:.1f} % of {cells} red cells): review the smear",
    "too_few_red_cells": "only {cells} red cells classified (grading counts at least 1,000): the grades are not given",
    "many_unclassified_red_cells": "{unclassified} of {cells} red cells unlike any trained shape ({share:.0%}): review them",
    "rbc_morphology_unreliable": "{unclassified} of {cells} red cells unlike any trained shape ({share:.0%}, above 15 %): "
                                 "the slide is unlike the classifier's training; no grade given, review the smear",
}


def grade(finding: Finding, percent: float) -> str | None:
    """``1+``, ``2+``, ``3+``, or None below 1+ (and for schistocytes, which are not graded)."""
    if finding.scale == "percent":
        return None
    lo1, lo2, above3 = SCALES[finding.scale]
    return "3+" if percent > above3 else "2+" if percent >= lo2 else "1+" if percent >= lo1 else None


def image_counts(detections: list[dict]) -> dict[str, int]:
    """Counts per class of one image's red-cell detections (result dicts with ``rbc_morphology``)."""
    return count_types(detections, "rbc", "rbc_morphology", CLASSES)


class Morphology(Tally):
    """Counts per shape class over any number of images (one slide), and the graded findings."""

    CLASSES = CLASSES

    @property
    def classified(self) -> int:
        """Red cells given a shape (the denominator of every percentage)."""
        return sum(n for c, n in self.counts.items() if c not in (UNCLASSIFIED, LEFTOVER))

    @property
    def unreliable(self) -> bool:
        u = self.counts[UNCLASSIFIED]
        return u >= MIN_UNCLASSIFIED and u > UNRELIABLE_UNCLASSIFIED * self.typed

    def table(self) -> dict[str, dict]:
        """Per class: count, percent of the classified red cells and its 95 % interval."""
        n, out = self.classified, {}
        for c in CLASSES:
            k = self.counts[c]
            if c in (UNCLASSIFIED, LEFTOVER):
                out[c] = {"count": k, "percent_of_typed": round(100 * k / self.typed, 1) if self.typed else None}
                continue
            lo, hi = binomial_ci(k, n)
            out[c] = {"count": k, "percent": round(100 * k / n, 2) if n else None,
                      "ci95": [round(100 * lo, 2), round(100 * hi, 2)] if n else None}
        return out

    def findings(self, minimum: int = MIN_RED_CELLS) -> dict[str, dict]:
        """Per finding: count, percent, its 95 % interval, its grade (None below 1+, with fewer
        than ``minimum`` red cells classified, or on a slide too unlike the training), its LOINC term."""
        n, out = self.classified, {}
        gradable = n >= minimum and not self.unreliable
        for f in FINDINGS:
            k = sum(self.counts[c] for c in f.classes)
            pct = 100 * k / n if n else None
            lo, hi = binomial_ci(k, n)
            out[f.name] = {"count": k, "percent": None if pct is None else round(pct, 2),
                           "ci95": [round(100 * lo, 2), round(100 * hi, 2)] if n else None,
                           "grade": grade(f, pct) if pct is not None and gradable else None,
                           "loinc": f.loinc, "loinc_name": f.loinc_name}
        return out

    def flags(self, minimum: int = MIN_RED_CELLS) -> dict[str, str]:
        n, out = self.classified, {}
        found = self.findings(minimum)
        s = found["schistocytes"]
        if n and n >= minimum and not self.unreliable and s["percent"] > SCHISTOCYTES_SIGNIFICANT:
            out["schistocytes_present"] = FLAG_TEXT["schistocytes_present"].format(percent=s["percent"], cells=n)
        for f in FINDINGS:
            # the specific poikilocytes graded 1+ or more: each its own flag; the summary terms
            # (anisocytosis, poikilocytosis) are in the findings, not flags of their own
            g = found[f.name]["grade"]
            if g is not None and f.name not in ("anisocytosis", "poikilocytosis"):
                out[f"{f.name}_present"] = FLAG_TEXT["present"].format(
                    name=f.name.replace("_", " "), grade=g, percent=found[f.name]["percent"], cells=n)
        u = self.counts[UNCLASSIFIED]
        if self.unreliable:
            out["rbc_morphology_unreliable"] = FLAG_TEXT["rbc_morphology_unreliable"].format(
                unclassified=u, cells=self.typed, share=u / self.typed)
        if u >= MIN_UNCLASSIFIED and u > MANY_UNCLASSIFIED * max(self.typed, 1):
            out["many_unclassified_red_cells"] = FLAG_TEXT["many_unclassified_red_cells"].format(
                unclassified=u, cells=self.typed, share=u / self.typed)
        if minimum and n < minimum:
            out["too_few_red_cells"] = FLAG_TEXT["too_few_red_cells"].format(cells=n)
        return out
