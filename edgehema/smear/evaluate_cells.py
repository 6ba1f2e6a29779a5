"""A per-cell classifier measured on a set of single-cell images (edgehema.smear.cell_sets), two ways:

* ``classifier``: the classifier alone, on the crop the device would take of the image's centre at
  the set's known scale (the classifier's training card: ``data_rbc_px``);
* ``pipeline``: the image counted as ``edgehema smear cell.jpg`` counts it (scale estimated,
  detector, classifier): the type of the white cell found nearest the image's centre, ``missed``
  where none is found.

Figures: the confusion matrix (rows: truth), per-class recall and precision, accuracy, balanced
accuracy (the mean recall over the classes the training card names, ``balanced_accuracy_over``:
Chula's leftover class ``uncategorised`` is not one), the share unclassified; for the pipeline also
the cells missed; for red-cell shapes also normal against abnormal (any other class, or unclassified).
The set is split as the classifier's training card says (edgehema.smear.cell_sets: by class, or by
whole field), so that its test part is the one the classifier never saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgehema.exceptions import InputFileError
from edgehema.smear.cell_sets import cell_set, split_by

MISSED = "missed"


def _figures(truth: list[str], pred: list[str], classes: list[str], reported: list[str], scored_classes=None) -> dict:
    rows, cols = classes, reported
    cm = np.zeros((len(rows), len(cols)), int)
    for t, p in zip(truth, pred):
        cm[rows.index(t), cols.index(p)] += 1
    recall, precision = {}, {}
    for i, c in enumerate(rows):
        recall[c] = round(float(cm[i, cols.index(c)] / max(cm[i].sum(), 1)), 4) if c in cols else None
        if c in cols:
            column = cm[:, cols.index(c)].sum()
            precision[c] = round(float(cm[i, cols.index(c)] / column), 4) if column else None
    scored = [r for c, r in recall.items() if r is not None and (scored_classes is None or c in scored_classes)]
    correct = sum(cm[i, cols.index(c)] for i, c in enumerate(rows) if c in cols)
    return {"cells": len(truth), "accuracy": round(float(correct / max(len(truth), 1)), 4),
            "balanced_accuracy": round(float(np.mean(scored)), 4) if scored else None,
            "recall": recall, "precision": precision,
            "unclassified": round(float(sum(p == "unclassified" for p in pred) / max(len(pred), 1)), 4),
            "confusion": {"rows": rows, "columns": cols, "counts": cm.tolist()}}


def evaluate_cells(root: str | Path, split: str = "test", model: str = "auto", task: str = "wbc_type",
                   mode: str = "classifier", engine: str = "model") -> dict:
    """The figures of one classifier (a shipped name, folder or FOLDER/model.tflite; ``auto`` the
    shipped one on the best engine here) on ``split`` of the set at ``root``."""
    from edgehema.smear import cells
    from edgehema.smear.image_io import read_image
    from edgehema.smear.learned import background
    from edgehema.smear.pipeline import analyse

    name = cells.default_classifier(task) if model == "auto" else model
    if name is None:
        raise ValueError(f"no {task} classifier shipped")
    classifier = cells.open_classifier(name, task)
    if mode == "pipeline" and task != "wbc_type":
        raise ValueError(f"mode pipeline measures white-cell types only; {task}: mode classifier")
    items = cell_set(root, split, by=split_by(classifier.folder.training))
    foreign = sorted({i.label for i in items} - set(classifier.classes))
    if foreign:
        raise InputFileError(root, f"holds classes the classifier does not know ({', '.join(foreign[:4])}); "
                                   f"its classes: {', '.join(classifier.classes)}")
    truth, pred, t0 = [], [], time.perf_counter()
    data_rbc_px = float(classifier.folder.training.get("data_rbc_px") or 0) or None
    size = classifier.folder.input_size[0] if classifier.folder.input_size else cells.CELL_INPUT
    for item in items:
        image = read_image(item.path)
        h, w = image.shape[:2]
        if mode == "classifier":
            if data_rbc_px is None:
                raise ValueError(f"{name}: its training card gives no data_rbc_px: measure with mode pipeline")
            crop = cells.crop(image, (w / 2, h / 2), data_rbc_px, background(image), classifier.crop_diameters(), size)
            got, _ = classifier.label(classifier.probabilities(crop[None])[0])
        else:
            result, _, _ = analyse(item.path, engine, image, wbc=name)
            found = [d for d in result["detections"] if d["class"] == "wbc" and "wbc_type" in d]
            if found:
                near = min(found, key=lambda d: ((d["box"][0] + d["box"][2]) / 2 - w / 2) ** 2
                           + ((d["box"][1] + d["box"][3]) / 2 - h / 2) ** 2)
                got = near["wbc_type"]
            else:
                got = MISSED
        truth.append(item.label)
        pred.append(got)
    classes = sorted({i.label for i in items})
    reported = sorted({classifier.folder.report_as.get(c, c) for c in classifier.classes}
                      | {cells.UNCLASSIFIED} | ({MISSED} if mode == "pipeline" else set()))
    reported = [c for c in reported if c in set(pred) | set(classes)] or reported
    # truth classes the classifier reports under another name (a platelet: unclassified) are scored so
    truth = [classifier.folder.report_as.get(t, t) for t in truth]
    classes = sorted({classifier.folder.report_as.get(c, c) for c in classes})
    over = classifier.folder.training.get("balanced_accuracy_over")
    out = _figures(truth, pred, classes, sorted(set(reported) | set(classes)), set(over) if over else None)
    if task == "rbc_morphology":
        out["normal_vs_abnormal"] = round(float(np.mean([(t == "normal") == (p == "normal") for t, p in zip(truth, pred)])), 4)
        out["balanced_accuracy_over"] = sorted(over) if over else classes
    out.update({"data": Path(root).name, "split": split, "split_by": split_by(classifier.folder.training), "mode": mode,
                "task": task, "classifier": classifier.file,
                "engine": engine if mode == "pipeline" else None,
                "seconds_per_cell": round((time.perf_counter() - t0) / max(len(items), 1), 5)})
    if mode == "pipeline":
        out["missed"] = round(float(sum(p == MISSED for p in pred) / max(len(pred), 1)), 4)
    return out


def type_stability(root: str | Path, split: str = "val", engine: str = "model", magnifications=(0.5, 0.75, 1.5, 2.0),
                   restains: dict | None = None, wbc: str = "auto", task: str = "wbc_type") -> dict:
    """How often a cell found in a whole field keeps its class (``task``: a white cell its type, a
    red cell its shape, by the classifier ``wbc``) when the field is seen at another magnification
    or restained (the scale and stain changes of other laboratories' microscopes): each val field
    counted as it is and changed; its cells matched by box (IoU >= 0.5, boxes brought back to the
    field's pixels); the share of matched cells given the same class; and the classes given on the
    fields as they are."""
    import cv2

    from edgehema.smear.annotations import annotated_set
    from edgehema.smear.cells import TASKS
    from edgehema.smear.detections import TYPE_KEYS, Detection, iou
    from edgehema.smear.image_io import read_image
    from edgehema.smear.pipeline import analyse
    from edgehema.smear.stain import restain

    restains = restains if restains is not None else {"purple a*+10 b*-12": {"da": 10, "db": -12},
                                                      "blue a*-8 b*-10": {"da": -8, "db": -10},
                                                      "pale spread x0.5": {"contrast": 0.5}}
    changes = [(f"{m:g}x", m, None) for m in magnifications] + [(n, 1.0, kw) for n, kw in restains.items()]
    tally = {name: {"matched": 0, "same": 0, "unmatched": 0} for name, _, _ in changes}
    cells_seen, given = 0, {}
    kind = TASKS[task]
    key = TYPE_KEYS[kind]
    choose = {"wbc": wbc, "rbc": "none"} if task == "wbc_type" else {"wbc": "none", "rbc": wbc}

    def wbcs(result, scale):
        return [(Detection(kind, *(v / scale for v in d["box"])), d[key]) for d in result["detections"]
                if d["class"] == kind and key in d]

    for item in annotated_set(root, split):
        image = read_image(item.path)
        base = wbcs(analyse(item.path, engine, image, **choose)[0], 1.0)
        cells_seen += len(base)
        for _, c in base:
            given[c] = given.get(c, 0) + 1
        if not base:
            continue
        for name, m, kw in changes:
            changed = image if m == 1.0 else cv2.resize(image, None, fx=m, fy=m,
                                                        interpolation=cv2.INTER_AREA if m < 1 else cv2.INTER_CUBIC)
            if kw:
                changed = restain(changed, **kw)
            other = wbcs(analyse(item.path, engine, changed, **choose)[0], m)
            for box, given_class in base:
                match = max(other, key=lambda o: iou(o[0], box), default=None)
                if match is None or iou(match[0], box) < 0.5:
                    tally[name]["unmatched"] += 1
                else:
                    tally[name]["matched"] += 1
                    tally[name]["same"] += match[1] == given_class
    return {"data": Path(root).name, "split": split, "engine": engine, "task": task, "classifier": wbc,
            "wbc": wbc, "white_cells": cells_seen, "cells": cells_seen, "given": dict(sorted(given.items())),
            "changes": {n: {**t, "same_type": round(t["same"] / t["matched"], 4) if t["matched"] else None}
                        for n, t in tally.items()}}
