"""The classical detector, for contrast with the learned one (OpenCV only, no training):

* stain: nuclei and platelets take up the purple-blue stain, red cells are pink on a pale
  background; a pixel is "stained" when its blue dominates its red clearly and it is dark enough;
* WBC: large stained blobs (a nucleus, lobes joined by closing), the box grown to take in the
  cytoplasm;
* platelets: small stained blobs;
* RBC: the cell mask (saturated or darker than the background, WBC removed), its distance
  transform, and one cell per local maximum (touching cells are split where their distance peaks
  are apart: the watershed idea); each cell's box from its peak's radius.

Sizes scale with the image: the constants are for BCCD's magnification (640 x 480, red cells about
100 pixels across), given as ``cell_px``.
"""

from __future__ import annotations

import numpy as np

from edgehema.smear.detections import Detection


def detect(image: np.ndarray, cell_px: float = 100.0) -> list[Detection]:
    import cv2

    scale = cell_px / 100.0
    blur = cv2.GaussianBlur(image, (5, 5), 0)
    b, g, r = (blur[:, :, k].astype(np.int16) for k in range(3))
    hsv = cv2.cvtColor(blur, cv2.COLOR_BGR2HSV)
    sat, val = hsv[:, :, 1].astype(np.int16), hsv[:, :, 2].astype(np.int16)
    stained = ((b - r) > 18) & (val < 215) & (sat > 60)
    stained = cv2.morphologyEx(stained.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    joined = cv2.morphologyEx(stained, cv2.MORPH_CLOSE,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(15 * scale) | 1,) * 2))
    out: list[Detection] = []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    wbc_mask = np.zeros(labels.shape, np.uint8)
    h, w = labels.shape
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        if area >= 1500 * scale ** 2:  # a nucleus: grow the box by the cytoplasm around it
            grow = 0.25 * max(bw, bh)
            box = (max(0, x - grow), max(0, y - grow), min(w, x + bw + grow), min(h, y + bh + grow))
            out.append(Detection("wbc", *box, score=min(1.0, area / (4000 * scale ** 2))))
            cv2.rectangle(wbc_mask, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), 1, -1)
    out = _merge_wbc(out)
    # Platelets: faintly stained (bluer than red, a little darker than the background), small.
    faint = (((b - r) > 8) & (val < 200) & (sat > 15) & (wbc_mask == 0)).astype(np.uint8)
    faint = cv2.morphologyEx(faint, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    faint = cv2.morphologyEx(faint, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(faint, connectivity=8)
    blue = (b - r).astype(np.float32)
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        if 120 * scale ** 2 <= area <= 1600 * scale ** 2 and max(bw, bh) <= 70 * scale:
            pad = 4 * scale
            strength = float(blue[labels == k].mean())
            out.append(Detection("plt", max(0.0, x - pad), max(0.0, y - pad), min(float(w), x + bw + pad),
                                 min(float(h), y + bh + pad), score=min(1.0, strength / 40.0)))
    # Red cells: circles of about a cell's radius (Hough), touching cells found apart, centres not in
    # a white cell.
    grey = cv2.medianBlur(cv2.cvtColor(blur, cv2.COLOR_BGR2LAB)[:, :, 0], 5)
    circles = cv2.HoughCircles(grey, cv2.HOUGH_GRADIENT, dp=1.5, minDist=55 * scale, param1=40, param2=24,
                               minRadius=int(35 * scale), maxRadius=int(62 * scale))
    background = float(np.percentile(grey, 90))
    for x, y, rr in (circles[0] if circles is not None else []):
        if wbc_mask[min(int(y), h - 1), min(int(x), w - 1)]:
            continue
        rr = float(rr)
        x0, y0, x1, y1 = max(0.0, x - rr), max(0.0, y - rr), min(float(w), x + rr), min(float(h), y + rr)
        # Score: how much darker than the background the cell's box is (a circle in the background
        # or across a gap between cells scores low).
        inside = grey[int(y0):int(y1) + 1, int(x0):int(x1) + 1]
        score = float(np.clip((background - inside.mean()) / 40.0, 0.0, 1.0)) if inside.size else 0.0
        out.append(Detection("rbc", x0, y0, x1, y1, score=score))
    return out


def _merge_wbc(found: list[Detection]) -> list[Detection]:
    """Lobes of one nucleus found apart make overlapping boxes: one white cell."""
    wbc = [d for d in found if d.kind == "wbc"]
    merged = True
    while merged:
        merged = False
        for i in range(len(wbc)):
            for j in range(i + 1, len(wbc)):
                a, b = wbc[i], wbc[j]
                if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1:
                    wbc[i] = Detection("wbc", min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1),
                                       score=max(a.score, b.score))
                    del wbc[j]
                    merged = True
                    break
            if merged:
                break
    return wbc + [d for d in found if d.kind != "wbc"]
