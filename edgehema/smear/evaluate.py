"""The image path measured on a VOC-annotated set (BCCD's val split): per class AP at IoU 0.5 and
mAP, precision and recall, and the per-image count errors the issue's targets are stated in."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgehema.smear.detections import SMEAR_CLASSES, Detection, counts
from edgehema.smear.pipeline import analyse
from edgehema.smear.voc import average_precision, read_annotation


def evaluate(root: str | Path, split: str = "val", engine: str = "model", stain: str = "auto",
             perturb=None, overlap: str = "none") -> dict:
    """``perturb``: a function applied to each image first (a stain unlike the training set, for
    measuring the stain normalisation: edgehema.smear.stain.restain)."""
    from edgehema.smear.image_io import read_image

    root = Path(root)
    ids = (root / f"{split}.txt").read_text().split()
    preds: dict[str, list[Detection]] = {}
    truth = {}
    errors: dict[str, list[int]] = {k: [] for k in SMEAR_CLASSES}
    relative_rbc: list[float] = []
    wbc_all_found = 0
    t0 = time.perf_counter()
    for i in ids:
        path = root / "JPEGImages" / f"{i}.jpg"
        image = read_image(path)
        result, _, every = analyse(path, engine, perturb(image) if perturb else image, stain, overlap)
        preds[i] = every  # AP over every detection and its score; counts as the result gives them
        truth[i] = read_annotation(root / "Annotations" / f"{i}.xml")
        true = counts([g for g, _ in truth[i]])
        for k in SMEAR_CLASSES:
            errors[k].append(result["counts"][k] - true[k])
        if true["rbc"]:
            relative_rbc.append(abs(result["counts"]["rbc"] - true["rbc"]) / true["rbc"])
        counted = [Detection(d["class"], *d["box"], score=d["score"]) for d in result["detections"]]
        wbc_matched = sum(1 for g, _ in truth[i] if g.kind == "wbc" and any(
            p.kind == "wbc" and _iou(p, g) >= 0.5 for p in counted))
        wbc_all_found += wbc_matched == true["wbc"]
    seconds = time.perf_counter() - t0
    per_class = {}
    for k in SMEAR_CLASSES:
        ap, precision, recall = average_precision(preds, truth, k)
        e = np.array(errors[k])
        per_class[k] = {"ap50": round(ap, 4), "precision": round(precision, 4), "recall": round(recall, 4),
                        "count_mae": round(float(np.abs(e).mean()), 3), "count_bias": round(float(e.mean()), 3)}
    rel = np.array(relative_rbc)
    return {
        "engine": engine, "overlap": overlap, "split": split, "images": len(ids), "seconds": round(seconds, 2),
        "map50": round(float(np.mean([per_class[k]["ap50"] for k in SMEAR_CLASSES])), 4),
        "classes": per_class,
        "rbc_count_within_5pct": round(float((rel <= 0.05).mean()), 4),
        "rbc_count_error_pct_median": round(float(np.median(rel) * 100), 2),
        "rbc_count_within_10pct": round(float((rel <= 0.10).mean()), 4),
        "wbc_all_found": round(wbc_all_found / len(ids), 4),
        "plt_within_1": round(float((np.abs(np.array(errors["plt"])) <= 1).mean()), 4),
    }


def _iou(a: Detection, b: Detection) -> float:
    from edgehema.smear.detections import iou

    return iou(a, b)
