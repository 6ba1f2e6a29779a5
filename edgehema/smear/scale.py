"""Scale: every image is brought to the detector's scale before detection.

The detector is trained with red cells ``MODEL_RBC_PX`` pixels across (its manifest's
``scale.rbc_px``). An image's own scale is, in this order: given (``--um-per-px``), from a
microscope profile (a TOML file naming ``um_per_px``), or estimated from the image itself.

The estimate does not ask the detector (which is only right at its own scale): the cells are
segmented from the slide's background by colour distance (three-class Otsu: background, red
cells, stained cells), holes filled (a red cell's pale centre), and the distance transform's local
maxima give each cell's inscribed radius, cells touching or not. Maxima on stained pixels
(nuclei, platelets) are left out; red cells, the most numerous cells, are the mode of the radii
weighted by radius^1.5 (plain counts favour debris and fragments, area weights the one white
cell). Measured on TXL-PBC train (docs/smear.md): within 25 % of the annotation's red-cell size in
73-96 % of images per source, at 0.5x, 1x and 2x alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehema.exceptions import ProfileError

#: Red-cell diameter, in pixels, of the images the detector sees (its training scale).
MODEL_RBC_PX = 40.0
#: Red-cell diameters in micrometres (what turns a given um/px into red-cell pixels), by species.
RBC_UM = {"human": 7.5, "dog": 7.0, "cat": 5.8, "horse": 5.7, "cattle": 5.8}
#: Estimated diameter / the annotation's box size, median over TXL-PBC train at 1x (the
#: inscribed radius is less than a box's half side): estimates are divided by it.
CALIBRATION = 0.906
#: Red cells of the images the detector was trained on are 62-148 px across (TXL-PBC's sources):
#: an image whose red cells are outside half the smallest to twice the largest is flagged.
TRAINED_RBC_PX = (31.0, 296.0)
#: Below this confidence the estimate is flagged unsure.
CONFIDENT = 0.5
#: The estimate is made on the image shrunk to this longest side at most (speed; the radius is
#: scaled back), and again at twice the resolution while the cells' median radius there is below
#: MIN_RADIUS pixels.
ESTIMATE_SIDE = 320
MIN_RADIUS = 6.0


@dataclass(frozen=True)
class Scale:
    """An image's scale: its red cells' diameter in pixels and, where known, micrometres per pixel."""

    rbc_px: float
    um_per_px: float | None
    source: str  # given | profile | estimated | assumed
    confidence: float  # 1 for given and profile
    cells: int = 0  # red cells the estimate rests on
    #: The estimate corrected by the sizes of the red cells the detector found (pipeline.refine).
    refined: bool = False

    def factor(self, model_rbc_px: float = MODEL_RBC_PX) -> float:
        """Resampling from the image to the detector's scale."""
        return model_rbc_px / self.rbc_px

    def flags(self) -> dict[str, str]:
        out = {}
        if self.source in ("estimated", "assumed") and self.confidence < CONFIDENT:
            out["scale_unsure"] = (f"image scale unsure (red cells estimated {self.rbc_px:.0f} px across from {self.cells} "
                                   f"cells, confidence {self.confidence:.2f}): give --um-per-px or a microscope profile")
        if not TRAINED_RBC_PX[0] <= self.rbc_px <= TRAINED_RBC_PX[1]:
            out["scale_outside_training"] = (f"red cells {self.rbc_px:.0f} px across: outside the "
                                             f"{TRAINED_RBC_PX[0]:.0f}-{TRAINED_RBC_PX[1]:.0f} px the detector is made "
                                             f"for (another magnification); review the counts")
        return out

    def to_dict(self) -> dict:
        return {"um_per_px": None if self.um_per_px is None else round(self.um_per_px, 5), "source": self.source,
                "confidence": round(self.confidence, 3), "rbc_px": round(self.rbc_px, 1), "cells": self.cells,
                "refined": self.refined}


def given(um_per_px: float, species: str | None = None, source: str = "given") -> Scale:
    if not um_per_px > 0:
        raise ValueError(f"--um-per-px {um_per_px}: must be a positive number")
    rbc_um = RBC_UM.get(species or "human", RBC_UM["human"])
    return Scale(rbc_um / um_per_px, um_per_px, source, 1.0)


def microscope(path: str | Path, species: str | None = None) -> Scale:
    """The scale a microscope profile gives: a TOML file with ``um_per_px`` (and, for people,
    ``name``, ``objective``, ``camera``)."""
    from edgehema._utils.toml import read_toml

    data = read_toml(Path(path), ProfileError, "the microscope profile")
    v = data.get("um_per_px")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ProfileError(f"{path}: um_per_px must be a positive number of micrometres per pixel, not {v!r}")
    return given(float(v), species, "profile")


def estimate(image: np.ndarray, species: str | None = None) -> Scale:
    """The scale estimated from a BGR field (see the module's docstring)."""
    import cv2

    h, w = image.shape[:2]
    f = min(1.0, ESTIMATE_SIDE / max(h, w))
    while True:
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else image
        radii = _cell_radii(small)
        # Cells a few pixels across in the shrunk field: look again at twice its resolution.
        if f >= 1 or (len(radii) >= 3 and np.median(radii) >= MIN_RADIUS):
            break
        f = min(1.0, 2 * f)
    if len(radii) < 3:
        return Scale(MODEL_RBC_PX / _ASSUMED_FACTOR, None, "assumed", 0.0, len(radii))
    lr = np.log(radii)
    edges = np.arange(np.log(3.0), np.log(max(radii.max(), 4.0)) + 0.1, 0.1)
    hist, edges = np.histogram(lr, bins=edges)
    i = int(np.argmax(np.convolve(hist * np.exp(1.5 * edges[:-1]), [1, 2, 1], "same")))
    centre = np.exp((edges[i] + edges[i + 1]) / 2)
    core = radii[(radii > centre / 1.3) & (radii < centre * 1.3)]
    rbc_px = 2.0 * float(np.median(core)) / f / CALIBRATION
    # Confidence: enough cells, and their radii agreeing (interquartile range against the median).
    q1, q3 = np.percentile(core, [25, 75])
    agreement = float(np.clip(1.0 - 2.0 * (q3 - q1) / np.median(core), 0.0, 1.0))
    confidence = (len(core) / (len(core) + 4.0)) * (0.5 + 0.5 * agreement)
    rbc_um = RBC_UM.get(species or "human", RBC_UM["human"])
    return Scale(rbc_px, rbc_um / rbc_px, "estimated", confidence, int(len(core)))


#: Where no cells can be measured: the image is taken as it comes (no resampling).
_ASSUMED_FACTOR = 1.0


def _cell_radii(image: np.ndarray) -> np.ndarray:
    """Inscribed radius of each cell-like region's centre, stained ones left out, in pixels."""
    import cv2

    lab = cv2.cvtColor(cv2.GaussianBlur(image, (0, 0), 1.0), cv2.COLOR_BGR2LAB)  # uint8: L, a, b scaled to 0-255
    L = lab[:, :, 0]
    bright = L >= _percentile_u8(L, 75)
    bg = np.array([_median_u8(lab[:, :, c][bright]) for c in range(3)], np.float32)  # the slide between cells
    diff = lab.astype(np.float32) - bg
    diff[:, :, 0] *= 100.0 / 255.0  # L back to CIELAB units, as a* and b* (offset only in 8 bits)
    d = cv2.magnitude(cv2.magnitude(diff[:, :, 0], diff[:, :, 1]), diff[:, :, 2])
    top = float(np.partition(d.ravel(), int(0.99 * (d.size - 1)))[int(0.99 * (d.size - 1))]) + 1e-6
    q = cv2.convertScaleAbs(d, alpha=255.0 / top)
    t1, _ = otsu3(q)
    mask = ((q > t1) * 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 255, -1)  # pale centres filled
    filled = cv2.morphologyEx(filled, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    dt = cv2.distanceTransform(filled, cv2.DIST_L2, 5)
    k = max(3, int(round(min(image.shape[:2]) / 40)) | 1)
    ys, xs = np.nonzero((dt == cv2.dilate(dt, np.ones((k, k), np.uint8))) & (dt >= 3))
    # Stained: bluer and darker than the slide (nuclei, platelets; red cells stay near its b*).
    stained = (-diff[:, :, 2] - diff[:, :, 0] / 2) > 60
    near_stain = cv2.blur(stained.astype(np.float32), (5, 5))
    keep = near_stain[ys, xs] < 0.3
    ys, xs = ys[keep], xs[keep]
    r = dt[ys, xs]
    hh, ww = dt.shape
    inside = (xs >= r) & (ys >= r) & (xs < ww - r) & (ys < hh - r)  # the whole inscribed circle in the field
    return r[inside].astype(np.float64)


def _percentile_u8(values: np.ndarray, pct: float) -> int:
    c = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return int(np.searchsorted(c, pct / 100.0 * c[-1]))


def _median_u8(values: np.ndarray) -> float:
    return float(_percentile_u8(values, 50)) if values.size else 0.0


def otsu3(values: np.ndarray) -> tuple[int, int]:
    """The two thresholds of a three-class Otsu on uint8 values (the largest between-class variance)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    i = np.arange(256)
    P, S = np.cumsum(p), np.cumsum(p * i)
    mu = S[-1]
    t1, t2 = i[:, None], i[None, :]
    w0, w1, w2 = P[t1], P[t2] - P[t1], 1.0 - P[t2]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (w0 * (S[t1] / w0 - mu) ** 2 + w1 * ((S[t2] - S[t1]) / w1 - mu) ** 2
             + w2 * ((mu - S[t2]) / w2 - mu) ** 2)
    v[~((t2 > t1) & (w0 > 0) & (w1 > 0) & (w2 > 1e-12))] = -1.0
    k = int(np.argmax(np.nan_to_num(v, nan=-1.0)))
    return k // 256, k % 256


def calibrate(root: str | Path, split: str = "train") -> dict:
    """Estimated red-cell size against the annotation's (median box side) on an annotated set:
    the median ratio (what CALIBRATION holds) and the share within 15 / 25 % per image size."""
    import cv2

    from edgehema.smear.annotations import annotated_set

    ratios: dict[str, list[float]] = {}
    for item in annotated_set(root, split):
        sides = [np.sqrt((g.x1 - g.x0) * (g.y1 - g.y0)) for g, _ in item.truth if g.kind == "rbc"]
        if len(sides) < 3:
            continue
        image = cv2.imread(str(item.path))
        s = estimate(image)
        key = f"{image.shape[1]}x{image.shape[0]}"
        ratios.setdefault(key, []).append(s.rbc_px * CALIBRATION / float(np.median(sides)) if s.source == "estimated"
                                          else float("nan"))
    every = np.array([r for rs in ratios.values() for r in rs])
    out = {"calibration": round(float(np.nanmedian(every)), 3), "images": int(len(every))}
    for key, rs in sorted(ratios.items()):
        e = np.array(rs) / out["calibration"] - 1
        out[key] = {"images": len(rs), "within_15pct": round(float(np.mean(np.abs(np.nan_to_num(e, nan=9)) <= 0.15)), 3),
                    "within_25pct": round(float(np.mean(np.abs(np.nan_to_num(e, nan=9)) <= 0.25)), 3)}
    return out
