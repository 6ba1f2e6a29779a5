"""What the smear detector's int8 forms are calibrated on, and the count thresholds it ships with.

Calibration inputs are fields of the set's train split as the device feeds them: at the
detector's scale (from the annotation's red cells: export.training.smear_detector.to_model_scale)
and padded with the background to the network's input, or, for a detector made before the scale
stage, resized to its input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehema.smear.detections import SMEAR_CLASSES, counts
from edgehema.smear.learned import INPUT, background, preprocess

#: Train images the int8 converters calibrate on (ONNX and TFLite alike).
CALIBRATION_IMAGES = 64
#: Scores tried for each class's count threshold.
THRESHOLD_GRID = tuple(round(0.2 + 0.025 * k, 3) for k in range(25))


def calibration_inputs(data: Path, rbc_px: float | None, n: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """``n`` train fields (spread over the split) as (1, 3, H, W) float32 network inputs."""
    import cv2

    from edgehema.smear.annotations import annotated_set

    items = annotated_set(data, "train")
    if rbc_px is None:  # the detector before the scale stage: its first n train images, as it was calibrated
        return [preprocess(cv2.imread(str(i.path))) for i in items[:n]]
    picked = [items[round(k * (len(items) - 1) / max(n - 1, 1))] for k in range(min(n, len(items)))]
    from export.training.smear_detector import to_model_scale

    boxes = [np.array([(SMEAR_CLASSES.index(g.kind), g.x0, g.y0, g.x1, g.y1) for g, _ in i.truth], np.float32).reshape(-1, 5)
             for i in picked]
    out = []
    for _, img, _ in to_model_scale([(i.name, cv2.imread(str(i.path)), b) for i, b in zip(picked, boxes)]):
        canvas = np.empty((INPUT[1], INPUT[0], 3), np.uint8)
        canvas[:] = background(img)
        h, w = min(img.shape[0], INPUT[1]), min(img.shape[1], INPUT[0])
        canvas[:h, :w] = img[:h, :w]
        out.append(preprocess(canvas))
    return out


def choose_thresholds(data: Path, engine: str, split: str = "train") -> dict:
    """Per class, the count threshold that counts the split's images best through the whole
    pipeline (scale estimate included): red cells within 10 % of the annotation, white cells exact,
    platelets within 1, ties to the smaller mean absolute error. Chosen on ``split`` (train), so
    the val figures never saw the choice."""
    from edgehema.smear.annotations import annotated_set
    from edgehema.smear.image_io import read_image
    from edgehema.smear.pipeline import analyse

    seen = []
    for item in annotated_set(data, split):
        _, _, every = analyse(item.path, engine, read_image(item.path), wbc="none")
        seen.append((every, counts([g for g, _ in item.truth])))
    chosen, figures = {}, {}
    for k in SMEAR_CLASSES:
        best = None
        for t in THRESHOLD_GRID:
            err = np.array([sum(d.cells for d in every if d.kind == k and d.score >= t) - true[k] for every, true in seen])
            truth = np.array([true[k] for _, true in seen])
            if k == "rbc":
                ok = np.abs(err) <= 0.1 * np.maximum(truth, 1)
            elif k == "wbc":
                ok = err == 0
            else:
                ok = np.abs(err) <= 1
            key = (float(ok.mean()), -float(np.abs(err).mean()))
            if best is None or key > best[0]:
                best = (key, t)
        chosen[k] = best[1]
        figures[k] = {"share_ok": round(best[0][0], 4), "count_mae": round(-best[0][1], 3)}
    return {"thresholds": chosen, "on": f"{Path(data).name} {split} ({len(seen)} images)", "figures": figures}


def detections_on(data: Path, engine: str, split: str = "train") -> list:
    """Every detection (with its score) of ``engine`` on each image of ``split``, through the whole
    pipeline (scale estimate included)."""
    from edgehema.smear.annotations import annotated_set
    from edgehema.smear.image_io import read_image
    from edgehema.smear.pipeline import analyse

    return [analyse(item.path, engine, read_image(item.path), wbc="none")[2] for item in annotated_set(data, split)]


def match_thresholds(reference: list, reference_thresholds: dict[str, float], other: list) -> dict:
    """Per class, the threshold at which ``other`` (an int8 form's detections on the training
    split) counts as many cells in all as ``reference`` (the float model's) counts at its own
    thresholds: quantization moves scores, the count should not move. Searched in steps of 0.0025
    within 0.1 of the reference's; ties to the nearest to it."""
    chosen, totals = {}, {}
    for k in SMEAR_CLASSES:
        t_ref = reference_thresholds[k]
        want = sum(d.cells for every in reference for d in every if d.kind == k and d.score >= t_ref)
        scores = np.array([d.score for every in other for d in every if d.kind == k])
        cells = np.array([d.cells for every in other for d in every if d.kind == k])
        grid = np.round(t_ref + 0.0025 * np.arange(-40, 41), 4)
        got = np.array([cells[scores >= t].sum() for t in grid])
        best = min(range(len(grid)), key=lambda i: (abs(got[i] - want), abs(grid[i] - t_ref)))
        chosen[k] = float(grid[best])
        totals[k] = {"float": int(want), "int8": int(got[best])}
    return {"thresholds": chosen, "totals": totals}
