"""Overlap correction for red cells, after seed 002 (SAM + CNN): a region of touching red cells
counts as the number of single cells its area holds, up to four.

The detector puts one box on each red cell it separates; where cells touch or overlap it may put
one box on two or three of them. Here the red cells' pixels are segmented (CIELAB lightness, Otsu's
threshold, pale centres filled), each connected region holding counted red-cell boxes is given
``round(area / single-cell area)`` cells, and the cells beyond its boxes are added to them (each box
standing for at most ``MAX_CELLS``). The single-cell area is the image's own: the median ellipse
inscribed in its red-cell boxes, times ``AREA_SLACK`` (chosen on BCCD train). White-cell boxes
are taken out of the red-cell pixels first. Sizes are the image's own, so any magnification works.

Off by default (``--overlap area``): on BCCD val it does not bring the counts nearer the annotation
(docs/smear.md), whose own clumps are often unlabelled.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from edgehema.smear.detections import Detection

MODES = ("none", "area")
#: Single-cell area = median inscribed ellipse of the image's red-cell boxes x this. Chosen on
#: BCCD train (1.3 to 2.5 tried; 1.8 nearest the annotation): a region's pixels take in the gaps
#: Otsu's threshold closes and the cells the detector missed beside it, and BCCD leaves many of
#: those unlabelled. With boxes that fit their cells exactly (drawn discs) 1.0 is the figure.
AREA_SLACK = 1.8
#: A region of touching cells counts at most this many per box (seed 002: "uncommon for more than
#: four RBCs to overlap").
MAX_CELLS = 4
#: Holes in the red-cell mask smaller than this share of a cell (its box's inscribed ellipse) are
#: pale cell centres, filled; the background between cells is larger or touches the border.
HOLE_SHARE = 0.18
#: Fewer counted red cells than this: no single-cell area to trust, no correction.
MIN_CELLS = 3
#: Larger images are not corrected: the region labels take 4 bytes a pixel (400 MB for an image of
#: 100 million pixels, on top of the image itself).
MAX_PIXELS = 25_000_000


def red_cell_mask(image: np.ndarray, white_cells: list[Detection], cell_area: float) -> np.ndarray:
    """uint8 mask (255 = red-cell pixel) of an 8-bit BGR image; ``cell_area``: a red cell's area in
    pixels (holes below HOLE_SHARE of it are filled)."""
    import cv2

    darkness = cv2.GaussianBlur(255 - cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[..., 0], (5, 5), 0)
    h, w = darkness.shape
    outside = np.ones((h, w), bool)
    for d in white_cells:
        outside[max(0, int(d.y0)):min(h, math.ceil(d.y1)), max(0, int(d.x0)):min(w, math.ceil(d.x1))] = False
    # The threshold from the pixels outside the white cells: a dark nucleus would otherwise take
    # Otsu's split between it and everything else, red cells included.
    pixels = darkness[outside] if outside.any() else darkness.ravel()
    threshold, _ = cv2.threshold(pixels.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = np.where(darkness > threshold, 255, 0).astype(np.uint8)
    _, holes, stats, _ = cv2.connectedComponentsWithStats(cv2.bitwise_not(mask), connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] < HOLE_SHARE * cell_area
    small[0] = False  # label 0 is the red-cell pixels themselves
    mask[small[holes]] = 255
    mask[~outside] = 0
    return mask


def box_cell_area(red_cells: list[Detection]) -> float:
    """The median ellipse inscribed in the red-cell boxes, in pixels."""
    return float(np.median([math.pi / 4 * (d.x1 - d.x0) * (d.y1 - d.y0) for d in red_cells]))


def applies(image: np.ndarray) -> bool:
    """Whether ``correct`` can work on this image (8-bit colour, not larger than MAX_PIXELS)."""
    return image.ndim == 3 and image.shape[0] * image.shape[1] <= MAX_PIXELS


def correct(image: np.ndarray, found: list[Detection]) -> list[Detection]:
    """``found`` (the counted detections) with each red-cell box's ``cells`` raised where its region
    holds more cells than boxes; everything else unchanged, in the same order."""
    import cv2

    red = [k for k, d in enumerate(found) if d.kind == "rbc"]
    if len(red) < MIN_CELLS or not applies(image):
        return found
    cell = box_cell_area([found[k] for k in red])
    mask = red_cell_mask(image, [d for d in found if d.kind == "wbc"], cell)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    h, w = mask.shape
    by_region: dict[int, list[int]] = {}
    for k in red:
        cx, cy = found[k].centre
        region = int(labels[min(max(int(cy), 0), h - 1), min(max(int(cx), 0), w - 1)])
        if region:  # a box whose centre is not on red-cell pixels is left as it is
            by_region.setdefault(region, []).append(k)
    area = cell * AREA_SLACK
    out = list(found)
    for region, boxes in by_region.items():
        cells = min(round(stats[region, cv2.CC_STAT_AREA] / area), MAX_CELLS * len(boxes))
        extra = cells - sum(found[k].cells for k in boxes)
        # The largest boxes first: a box on two touching cells is larger than one on a single cell.
        boxes = sorted(boxes, key=lambda k: -(found[k].x1 - found[k].x0) * (found[k].y1 - found[k].y0))
        while extra > 0:
            grown = False
            for k in boxes:
                if extra and out[k].cells < MAX_CELLS:
                    out[k] = replace(out[k], cells=out[k].cells + 1)
                    extra -= 1
                    grown = True
            if not grown:
                break
    return out
