"""What the image path finds: detections (class, box, score) and per-image counts."""

from __future__ import annotations

from dataclasses import dataclass

#: Cell classes of a blood smear, in the order models and results use them.
SMEAR_CLASSES: tuple[str, ...] = ("rbc", "wbc", "plt")
#: The result key a per-cell classifier's answer is reported under, per detection class.
TYPE_KEYS = {"wbc": "wbc_type", "rbc": "rbc_morphology"}


@dataclass(frozen=True)
class Detection:
    kind: str  # one of SMEAR_CLASSES
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    #: Cells this detection stands for (a clump of touching red cells counts as several).
    cells: int = 1
    #: What a per-cell classifier says the cell is (edgehema.smear.cells): a white cell's type, a
    #: red cell's shape; None where none ran.
    cell_type: str | None = None
    cell_type_p: float | None = None

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def to_dict(self) -> dict:
        out = {"class": self.kind, "box": [round(float(v), 1) for v in (self.x0, self.y0, self.x1, self.y1)],
               "score": round(float(self.score), 4), "cells": int(self.cells)}
        if self.cell_type is not None:
            key = TYPE_KEYS[self.kind]
            out[key], out[f"{key}_p"] = self.cell_type, self.cell_type_p
        return out


def iou(a: Detection, b: Detection) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def counts(detections: list[Detection]) -> dict[str, int]:
    out = {k: 0 for k in SMEAR_CLASSES}
    for d in detections:
        out[d.kind] += d.cells
    return out
