"""Counts per class of the cells one per-cell classifier typed, over one image or many (a slide):
what the white-cell differential (edgehema.smear.differential) and the red-cell morphology
(edgehema.smear.morphology) both start from. A class the tally does not know is counted unclassified."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

UNCLASSIFIED = "unclassified"


def count_types(detections: list[dict], kind: str, key: str, classes: tuple[str, ...]) -> dict[str, int]:
    """Counts per class of one image's detections of ``kind`` (result dicts) that carry ``key``."""
    out = {c: 0 for c in classes}
    for d in detections:
        t = d.get(key)
        if d.get("class") == kind and t is not None:
            out[t if t in out else UNCLASSIFIED] += 1
    return out


@dataclass
class Tally:
    """Counts per class (``CLASSES``, set by each kind of tally) added image by image."""

    CLASSES: ClassVar[tuple[str, ...]] = ()
    counts: dict[str, int] = field(default_factory=dict)
    images: int = 0

    def __post_init__(self) -> None:
        self.counts = {c: int(self.counts.get(c, 0)) for c in self.CLASSES}

    def add(self, per_class: dict[str, int]) -> None:
        self.images += 1
        for c, n in per_class.items():
            self.counts[c if c in self.counts else UNCLASSIFIED] += int(n)

    @property
    def typed(self) -> int:
        return sum(self.counts.values())
