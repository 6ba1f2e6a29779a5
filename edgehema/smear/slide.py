"""One slide's result from its images' results: the counts summed, the white-cell differential
(edgehema.smear.differential) and the red-cell morphology with its ICSH grades
(edgehema.smear.morphology) over all of them, with the flags a laboratory acts on. A slide is the
images of one folder, or those named with ``smear --slide ID``."""

from __future__ import annotations

from edgehema.smear.detections import SMEAR_CLASSES
from edgehema.smear.differential import Differential
from edgehema.smear.morphology import Morphology


class SlideAccumulator:
    """Add each image's result as it is counted; ``result()`` is the slide's (kind ``smear_slide``)."""

    def __init__(self, slide_id: str):
        self.slide_id = slide_id
        self.differential = Differential()
        self.morphology = Morphology()
        self.images = 0
        self.typed_images = 0
        self.shaped_images = 0
        self.sources: list[str] = []
        self.counts = {k: 0 for k in SMEAR_CLASSES}
        self.scale_estimated = False

    def add(self, result: dict) -> None:
        self.images += 1
        self.sources.append(result["source"])
        for k in SMEAR_CLASSES:
            self.counts[k] += int(result["counts"].get(k, 0))
        if result.get("differential") is not None:
            self.typed_images += 1
            self.differential.add(result["differential"])
        if result.get("morphology") is not None:
            self.shaped_images += 1
            self.morphology.add(result["morphology"])
            self.scale_estimated |= (result.get("scale") or {}).get("source") in ("estimated", "assumed")

    def result(self) -> dict:
        typed, shaped = self.typed_images > 0, self.shaped_images > 0
        flags = self.differential.flags() if typed else {}
        if shaped:
            flags.update(self.morphology.flags())
            sized = [f for f in ("macrocytes", "microcytes", "anisocytosis") if self.morphology.findings()[f]["grade"]]
            if sized and self.scale_estimated:
                flags["rbc_size_relative"] = (f"{', '.join(sized)} judged against each field's own red cells (its scale "
                                              "estimated from them): give --um-per-px or --microscope for a physical size")
        return {
            "kind": "smear_slide",
            "sample_id": self.slide_id,
            "slide_id": self.slide_id,
            "images": self.images,
            "sources": list(self.sources),
            "counts": dict(self.counts),
            "leukocytes": self.differential.leukocytes,
            "wbc_typed": self.differential.typed,
            "differential": self.differential.table() if typed else None,
            "rbc_typed": self.morphology.typed,
            "rbc_classified": self.morphology.classified,
            "morphology": self.morphology.table() if shaped else None,
            "findings": self.morphology.findings() if shaped else None,
            "rbc_size_reference": None if not shaped else "each field's red cells" if self.scale_estimated else "physical",
            "flags": sorted(flags),
            "flag_details": flags,
        }
