"""Stain normalisation: a smear stained or photographed unlike the detector's training images is
brought to their colour statistics before detection (Reinhard et al. 2001: each CIELAB channel's
mean and spread matched to a reference), with OpenCV.

Stains differ between laboratories, batches and scanners; a detector trained on one stain sees the
others as unfamiliar colours. Matching the colour statistics of the whole field is the classic
remedy; it cannot restore what the stain did not show (a pale nucleus stays low in contrast).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: CIELAB (OpenCV's 8-bit scale) per-image channel means and standard deviations, averaged over
#: BCCD train's 205 images (the detector's training set), measured 2026-12-02.
REFERENCE_MEAN = (187.3, 132.94, 126.9)
REFERENCE_STD = (20.31, 8.55, 10.77)


@dataclass(frozen=True)
class StainReference:
    """The stain a detector was trained on: what ``stain_unlike_training`` compares an image with,
    and what normalisation brings it to. It travels in the model's manifest (``stain_reference``),
    so a detector retrained on a laboratory's own slides carries that laboratory's stain."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: CIELAB a*, b* means farther than this from the reference's are unlike.
    tolerance: float = 8.0
    #: A colour spread (hypotenuse of the a*, b* standard deviations) under this is pale or faded.
    spread_min: float = 9.0
    source: str = ""

    def unlike(self, q: dict) -> bool:
        return (max(abs(q["stain_a"] - self.mean[1]), abs(q["stain_b"] - self.mean[2])) > self.tolerance
                or q["stain_spread"] < self.spread_min)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "StainReference":
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d.get("tolerance", 8.0)), float(d.get("spread_min", 9.0)),
                   str(d.get("source", "")))


#: BCCD train's stain: the shipped detector's, and the reference of models whose manifest has none.
#: Spread limit: BCCD train's smallest colour spread is 10.23 (val's 9.92); BCCD val with its colour
#: spread halved is 8.46 at the 95th percentile.
BCCD = StainReference(REFERENCE_MEAN, REFERENCE_STD, 8.0, 9.0, "BCCD train (205 images)")
#: A reference made from other images sets its spread limit to this fraction of their smallest
#: spread (BCCD: 0.88 x 10.23 = 9.0).
SPREAD_MARGIN = 0.88


def reference_from_images(images, source: str) -> StainReference:
    """The stain of a set of BGR images (a detector's training images): per-image CIELAB means and
    standard deviations averaged; the spread limit from their smallest spread."""
    stats = [lab_statistics(img) for img in images]
    if not stats:
        raise ValueError("a stain reference needs at least one image")
    means = np.mean([m for m, _ in stats], axis=0)
    stds = np.mean([s for _, s in stats], axis=0)
    smallest = min(float(np.hypot(s[1], s[2])) for _, s in stats)
    return StainReference(tuple(round(float(v), 2) for v in means), tuple(round(float(v), 2) for v in stds),
                          8.0, round(SPREAD_MARGIN * smallest, 2), source)
#: Modes of ``--stain``: ``auto`` normalises only images whose stain is unlike training (the
#: ``stain_unlike_training`` check), ``always`` every image, ``never`` none.
MODES = ("auto", "always", "never")


def normalise(image: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None,
              reference: StainReference = BCCD) -> np.ndarray:
    """The BGR image with its CIELAB channel means and standard deviations set to the reference's.
    ``stats``: (means, standard deviations) of the whole image when ``image`` is a band of it (an
    image streamed row by row); by default the image's own."""
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    if stats is None:
        stats = lab_statistics(image)
    mean = np.asarray(stats[0], np.float32)
    std = np.maximum(np.asarray(stats[1], np.float32), 1e-3)
    out = (lab - mean) * (np.asarray(reference.std, np.float32) / std) + np.asarray(reference.mean, np.float32)
    return cv2.cvtColor(np.clip(out + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


def lab_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIELAB (means, standard deviations) per channel of a BGR image, in float64 (as a streamed
    image's are summed, so that both give the same normalisation)."""
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)
    mean = lab.mean(0)
    return mean, np.sqrt(np.maximum(np.square(lab).mean(0) - mean ** 2, 0.0))


def restain(image: np.ndarray, da: float = 0.0, db: float = 0.0, contrast: float = 1.0, dl: float = 0.0) -> np.ndarray:
    """A stain unlike the training set, for measuring: CIELAB a*, b* moved by ``da``, ``db``, the
    colour spread scaled by ``contrast`` (below 1: a pale stain), lightness moved by ``dl``."""
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    for ch, shift in ((1, da), (2, db)):
        lab[:, :, ch] = (lab[:, :, ch] - 128.0) * contrast + 128.0 + shift
    lab[:, :, 0] += dl
    return cv2.cvtColor(np.clip(lab + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)
