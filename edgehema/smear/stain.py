"""Stain normalisation: a smear stained or photographed unlike the detector's training images is
brought to their colour statistics before detection (Reinhard et al. 2001: each CIELAB channel's
mean and spread matched to a reference), with OpenCV.

Stains differ between laboratories, batches and scanners; a detector trained on one stain sees the
others as unfamiliar colours. Matching the colour statistics of the whole field is the classic
remedy; it cannot restore what the stain did not show (a pale nucleus stays low in contrast).
"""

from __future__ import annotations

import numpy as np

#: CIELAB (OpenCV's 8-bit scale) per-image channel means and standard deviations, averaged over
#: BCCD train's 205 images (the detector's training set), measured 2026-12-02.
REFERENCE_MEAN = (187.3, 132.94, 126.9)
REFERENCE_STD = (20.31, 8.55, 10.77)
#: Modes of ``--stain``: ``auto`` normalises only images whose stain is unlike training (the
#: ``stain_unlike_training`` check), ``always`` every image, ``never`` none.
MODES = ("auto", "always", "never")


def normalise(image: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The BGR image with its CIELAB channel means and standard deviations set to the reference's.
    ``stats``: (means, standard deviations) of the whole image when ``image`` is a band of it (an
    image streamed row by row); by default the image's own."""
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    if stats is None:
        stats = lab_statistics(image)
    mean = np.asarray(stats[0], np.float32)
    std = np.maximum(np.asarray(stats[1], np.float32), 1e-3)
    out = (lab - mean) * (np.asarray(REFERENCE_STD, np.float32) / std) + np.asarray(REFERENCE_MEAN, np.float32)
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
