"""The image path measured on an annotated set (VOC or YOLO layout: edgehema.smear.annotations):
per class AP at IoU 0.5 and mAP, precision and recall, and the per-image count figures the targets
are stated in (red cells within 5 / 10 % of the annotation, white cells exact, platelets within 1),
over the whole split and per source (images of one size come from one source in TXL-PBC), at the
images' own magnification or resampled (``magnification`` 0.5: the field as a microscope at half
the magnification would see it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgehema.smear.annotations import annotated_set
from edgehema.smear.detections import SMEAR_CLASSES, Detection, counts, iou
from edgehema.smear.pipeline import analyse
from edgehema.smear.voc import average_precision


def evaluate(root: str | Path, split: str = "val", engine: str = "model", stain: str = "auto",
             perturb=None, overlap: str = "none", magnification: float = 1.0, um_per_px: float | None = None) -> dict:
    """``perturb``: a function applied to each image first (a stain unlike the training set, for
    measuring the stain normalisation: edgehema.smear.stain.restain). ``magnification``: each image
    and its boxes resampled by it first."""
    import cv2

    from edgehema.smear.image_io import read_image

    items = annotated_set(root, split)
    images: list[dict] = []
    t0 = time.perf_counter()
    for item in items:
        image = read_image(item.path)
        truth = item.truth
        # Images of one size come from one microscope in the sets here: the size names the source.
        source = f"{image.shape[1]}x{image.shape[0]}"
        if magnification != 1.0:
            h, w = image.shape[:2]
            image = cv2.resize(image, (max(1, round(w * magnification)), max(1, round(h * magnification))),
                               interpolation=cv2.INTER_AREA if magnification < 1 else cv2.INTER_CUBIC)
            truth = [(Detection(g.kind, g.x0 * magnification, g.y0 * magnification, g.x1 * magnification,
                                g.y1 * magnification), diff) for g, diff in truth]
        result, _, every = analyse(item.path, engine, perturb(image) if perturb else image, stain, overlap, um_per_px,
                                   wbc="none")
        images.append({"name": item.name, "source": source, "every": every,
                       "counted": [Detection(d["class"], *d["box"], score=d["score"]) for d in result["detections"]],
                       "counts": result["counts"], "truth": truth, "flags": result["flags"],
                       "scale": result.get("scale")})
    seconds = time.perf_counter() - t0
    report = {"engine": engine, "overlap": overlap, "split": split, "data": Path(root).name,
              "magnification": magnification, "seconds": round(seconds, 2), **figures(images)}
    sources = sorted({i["source"] for i in images})
    if len(sources) > 1:
        report["by_source"] = {s: figures([i for i in images if i["source"] == s]) for s in sources}
    return report


def figures(images: list[dict]) -> dict:
    """The measures of a list of evaluated images (see the module's docstring)."""
    preds = {i["name"]: i["every"] for i in images}  # AP over every detection and its score
    truth = {i["name"]: i["truth"] for i in images}
    errors: dict[str, list[int]] = {k: [] for k in SMEAR_CLASSES}
    relative_rbc: list[float] = []
    wbc_all_found = wbc_exact = 0
    flagged = 0
    for i in images:
        true = counts([g for g, _ in i["truth"]])
        for k in SMEAR_CLASSES:
            errors[k].append(i["counts"][k] - true[k])
        if true["rbc"]:
            relative_rbc.append(abs(i["counts"]["rbc"] - true["rbc"]) / true["rbc"])
        matched = sum(1 for g, _ in i["truth"] if g.kind == "wbc" and any(
            p.kind == "wbc" and iou(p, g) >= 0.5 for p in i["counted"]))
        wbc_all_found += matched == true["wbc"]
        wbc_exact += i["counts"]["wbc"] == true["wbc"]
        flagged += bool(i["flags"])
    per_class = {}
    for k in SMEAR_CLASSES:
        ap, precision, recall = average_precision(preds, truth, k)
        e = np.array(errors[k])
        per_class[k] = {"ap50": round(ap, 4), "precision": round(precision, 4), "recall": round(recall, 4),
                        "count_mae": round(float(np.abs(e).mean()), 3), "count_bias": round(float(e.mean()), 3)}
    rel = np.array(relative_rbc) if relative_rbc else np.array([np.nan])
    n = max(len(images), 1)
    return {
        "images": len(images),
        "map50": round(float(np.nanmean([per_class[k]["ap50"] for k in SMEAR_CLASSES])), 4),
        "classes": per_class,
        "rbc_count_within_5pct": round(float((rel <= 0.05).mean()), 4),
        "rbc_count_within_10pct": round(float((rel <= 0.10).mean()), 4),
        "rbc_count_error_pct_median": round(float(np.nanmedian(rel) * 100), 2),
        "wbc_all_found": round(wbc_all_found / n, 4),
        "wbc_exact": round(wbc_exact / n, 4),
        "plt_within_1": round(float((np.abs(np.array(errors["plt"])) <= 1).mean()), 4),
        "flagged": round(flagged / n, 4),
    }
