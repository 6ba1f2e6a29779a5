"""Pascal VOC annotations (BCCD's format) and the VOC measure of a detector: AP at IoU 0.5.

AP is the area under the precision-recall curve with VOC 2010's all-point interpolation; boxes
marked ``difficult`` neither count as misses nor as false detections.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from edgehema.exceptions import InputFileError
from edgehema.smear.detections import SMEAR_CLASSES, Detection, iou

#: VOC class names as BCCD writes them -> edgehema's.
NAMES = {"rbc": "rbc", "wbc": "wbc", "platelets": "plt", "platelet": "plt", "plt": "plt"}


def read_annotation(path: str | Path) -> list[tuple[Detection, bool]]:
    """(box, difficult) of every object of a VOC XML file."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputFileError(path, f"not a VOC annotation: {exc}") from None
    out = []
    for obj in root.iter("object"):
        name = NAMES.get((obj.findtext("name") or "").strip().lower())
        box = obj.find("bndbox")
        if name is None or box is None:
            continue
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise InputFileError(path, "an object's bndbox is not four numbers") from None
        out.append((Detection(name, x0, y0, x1, y1), (obj.findtext("difficult") or "0").strip() == "1"))
    return out


def average_precision(predictions: dict[str, list[Detection]], truth: dict[str, list[tuple[Detection, bool]]],
                      kind: str, threshold: float = 0.5) -> tuple[float, float, float]:
    """(AP, precision, recall at all detections) of class ``kind`` over images keyed alike."""
    scored = sorted(((d.score, image, d) for image, ds in predictions.items() for d in ds if d.kind == kind),
                    key=lambda t: -t[0])
    gts = {image: [(g, diff) for g, diff in boxes if g.kind == kind] for image, boxes in truth.items()}
    used = {image: [False] * len(g) for image, g in gts.items()}
    n_positive = sum(1 for g in gts.values() for _, diff in g if not diff)
    tp = np.zeros(len(scored))
    fp = np.zeros(len(scored))
    for k, (_, image, d) in enumerate(scored):
        best, best_j = 0.0, -1
        for j, (g, _) in enumerate(gts.get(image, [])):
            o = iou(d, g)
            if o > best:
                best, best_j = o, j
        if best >= threshold:
            g, difficult = gts[image][best_j]
            if difficult:
                continue
            if not used[image][best_j]:
                used[image][best_j] = True
                tp[k] = 1
            else:
                fp[k] = 1
        else:
            fp[k] = 1
    if n_positive == 0:
        return float("nan"), float("nan"), float("nan")
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / n_positive
    precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    ap = float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    return ap, float(precision[-1]) if len(precision) else 0.0, float(recall[-1]) if len(recall) else 0.0


__all__ = ["NAMES", "SMEAR_CLASSES", "average_precision", "read_annotation"]
