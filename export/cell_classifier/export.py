"""``edgehema export`` for per-cell classifiers: a float ONNX classifier (the training recipe's
``model-float.onnx`` with its ``training.json`` beside it, or a classifier folder) to a device
folder of kind ``smear`` whose ``task`` names what it tells: int8 ONNX (onnxruntime) and, for
``tflite-int8``, int8 TFLite (LiteRT) beside it; calibrated on the cell set's train split, measured
on its val split (test is left for ``evaluate-smear --cells``), gated.

Gates: each int8 form gives the float model's class on at least 99 % of val cells, its balanced
accuracy within 0.01 of float's, and its known answer within 0.05 of float's probabilities. The
folder is written either way, with the failures in its manifest; the command then exits 1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from edgehema.exceptions import BundleError
from edgehema.model.bundle import SMEAR_GRAPH, SmearFolder, amend, write_manifest

from export.common import ExportError

TARGETS = ("onnx-int8", "tflite-int8")
GATES = {"agreement": 0.99, "balanced_accuracy": 0.01, "known_answer": 0.05}
VERSION = "1.0.0"
#: Train cells the int8 forms are calibrated on, per class.
CALIBRATION_PER_CLASS = 24
#: A cell whose most likely class is less likely than this is unclassified: its type is less
#: likely than all the others together...
UNSURE_BELOW = 0.5
#: ... unless that leaves more than this share of val cells unclassified (classes that shade into
#: each other, as red-cell shapes do: a cell between an ovalocyte and a normal one): then the
#: threshold is the top probability below which this share of val cells lies.
UNSURE_SHARE = 0.05


def unsure_threshold(float_p: np.ndarray) -> float:
    """The manifest's ``unsure_below`` from float's probabilities on val."""
    return round(float(min(UNSURE_BELOW, np.quantile(float_p.max(1), UNSURE_SHARE))), 4)


def card_of(source: Path) -> tuple[Path, dict]:
    """(float ONNX file, training card) of a classifier source, or ExportError naming what is missing."""
    if source.is_dir():
        float_model = source / "model-float.onnx"
        if (source / SMEAR_GRAPH).is_file():
            return float_model, SmearFolder.load(source).training
        card = source / "training.json"
    else:
        float_model, card = source, source.parent / "training.json"
    if not float_model.is_file() or not card.is_file():
        raise ExportError(f"{source}: a cell classifier to export is model-float.onnx with its training.json beside it")
    return float_model, json.loads(card.read_text())


def is_classifier(source: Path) -> bool:
    """Whether ``source`` is a per-cell classifier (its training card or manifest names a task)."""
    try:
        return bool(card_of(Path(source))[1].get("task"))
    except (ExportError, BundleError, ValueError, OSError):
        return False


def inputs(data: Path, split: str, card: dict, per_class: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(NCHW float32 crops as the device sees them, labels, classes) of a split, centred."""
    from edgehema.smear.cells import to_input

    from export.training.cell_classifier import load, sample, task_spec

    spec = task_spec(card)
    images, labels, classes, _ = load(data, split, spec)
    if per_class:
        keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(len(classes))])
        images, labels = [images[i] for i in keep], labels[keep]
    return to_input(np.stack([sample(i, None, spec) for i in images])), labels, classes


def _spec(card: dict) -> dict:
    from export.training.cell_classifier import task_spec

    return task_spec(card)


def _views(card: dict) -> int:
    return _spec(card)["views"]


def _task(model: Path) -> str:
    return SmearFolder.load(model.parent if model.suffix == ".tflite" else model).task


def _predict(model: Path, x: np.ndarray) -> np.ndarray:
    """The device's probabilities: the int8 form as it runs there, over its folder's views."""
    from edgehema.smear import cells

    c = cells.open_classifier(str(model), _task(model))
    return cells.run_views(c.engine, x, c.folder.views)


def _float_predict(float_model: Path, x: np.ndarray, views: int = 1) -> np.ndarray:
    import onnxruntime as ort

    from edgehema.smear import cells

    return cells.run_views(ort.InferenceSession(str(float_model), providers=["CPUExecutionProvider"]), x, views)


def export_cells(source: Path, target: str, data: Path, out_dir: Path) -> tuple[Path, list[str], list[str]]:
    """(folder, failures, lines): the device folder of a classifier, its int8 forms gated."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgehema.smear import cells
    from export.training.cell_classifier import figures

    if target not in TARGETS:
        raise ExportError(f"--target {target}: a cell classifier exports to {' or '.join(TARGETS)}")
    float_model, card = card_of(Path(source))
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: must not exist or be empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(float_model, out_dir / "model-float.onnx")
    calib, _, classes = inputs(data, "train", card, CALIBRATION_PER_CLASS)
    if classes != card["classes"]:
        raise ExportError(f"{data}: classes {classes} are not the classifier's {card['classes']}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"image": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self._it, None)

    # int8 activations and weights (S8S8, onnxruntime's first choice for QDQ): on PBC val it gives
    # float's class on 99.8 % of cells where uint8 activations with 7-bit weights (the detector's
    # guard against x86 kernels without VNNI) gave 98.2 %; the known answer checked at load guards
    # any CPU whose fused kernels compute otherwise (it then runs unfused, exact). The classifying
    # layer and its softmax stay float (160 x 8 weights: a class's margin is its answer).
    import onnx

    head = [n.name for n in onnx.load(str(out_dir / "model-float.onnx")).graph.node if n.op_type in ("Gemm", "MatMul", "Softmax")]
    quantize_static(str(out_dir / "model-float.onnx"), str(out_dir / SMEAR_GRAPH), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True, reduce_range=False, nodes_to_exclude=head,
                    calibrate_method=CalibrationMethod.Percentile if _spec(card)["calibration"] == "percentile"
                    else CalibrationMethod.MinMax)
    val_x, val_y, _ = inputs(data, "val", card)
    views = _views(card)
    float_p = _float_predict(out_dir / "model-float.onnx", val_x, views)
    skip = tuple(c for c in classes if c not in card.get("balanced_accuracy_over", classes))
    float_report = {**figures(val_y, float_p.argmax(1), classes, skip), "cells": int(len(val_y))}
    float_answer = _known_answer_float(out_dir / "model-float.onnx", int(card["input"]), card["task"])
    _write(out_dir, card, classes, float_report, float_answer, data, unsure_threshold(float_p))
    cells.open_classifier.cache_clear()
    failures, lines = [], []
    report = _measure(out_dir, val_x, val_y, (classes, skip), float_p, float_report, float_answer, "int8 ONNX", failures, lines)
    manifest = amend(SmearFolder.load(out_dir).manifest, evaluation={"data": f"{data.name} val", "float": float_report,
                                                                     "int8": report})
    write_manifest(out_dir, manifest)
    if target == "tflite-int8":
        _add_tflite(out_dir, calib, val_x, val_y, (classes, skip), float_p, float_report, float_answer, failures, lines)
    manifest = amend(SmearFolder.load(out_dir).manifest, gates={"limits": GATES, "failed": list(failures)})
    write_manifest(out_dir, manifest)
    cells.open_classifier.cache_clear()
    return out_dir, failures, lines


def _known_answer_float(float_model: Path, size: int, task: str) -> dict:
    import onnxruntime as ort

    from edgehema.smear import cells

    return cells.known_answer(ort.InferenceSession(str(float_model), providers=["CPUExecutionProvider"]), size,
                              cells.KNOWN_ANSWER_INPUT[task])


def _measure(target: Path, val_x, val_y, classes_skip: tuple, float_p, float_report, float_answer, what: str,
             failures: list, lines: list) -> dict:
    """The int8 form at ``target`` on val against float; ``classes_skip``: (classes, those not in the
    balanced accuracy)."""
    from edgehema.smear import cells
    from export.training.cell_classifier import figures

    cells.open_classifier.cache_clear()
    p = _predict(target, val_x)
    report = {**figures(val_y, p.argmax(1), *classes_skip), "cells": int(len(val_y)),
              "agreement_with_float": round(float((p.argmax(1) == float_p.argmax(1)).mean()), 4)}
    if report["agreement_with_float"] < GATES["agreement"]:
        failures.append(f"{what}: agrees with float on {report['agreement_with_float']:.2%} of val cells "
                        f"(gate {GATES['agreement']:.0%})")
    if float_report["balanced_accuracy"] - report["balanced_accuracy"] > GATES["balanced_accuracy"]:
        failures.append(f"{what}: balanced accuracy {report['balanced_accuracy']:.4f}, float {float_report['balanced_accuracy']:.4f}")
    c = cells.open_classifier(str(target), _task(target))
    got = cells.known_answer(c.engine, val_x.shape[-1], float_answer["input"])["probabilities"]
    off = max(abs(a - b) for a, b in zip(got, float_answer["probabilities"]))
    if off > GATES["known_answer"]:
        failures.append(f"{what}: known answer {off:.3f} from float's")
    lines.append(f"{what}: val balanced accuracy {report['balanced_accuracy']:.4f} (float {float_report['balanced_accuracy']:.4f}), "
                 f"same class as float on {report['agreement_with_float']:.2%} of {len(val_y)} cells; "
                 f"{(target if target.suffix == '.tflite' else target / SMEAR_GRAPH).stat().st_size:,} bytes")
    return report


def _write(out_dir: Path, card: dict, classes: list[str], float_report: dict, float_answer: dict, data: Path,
           unsure_below: float) -> None:
    import onnxruntime as ort

    from edgehema.smear import cells

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own arithmetic
    answer = cells.known_answer(ort.InferenceSession(str(out_dir / SMEAR_GRAPH), opts, providers=["CPUExecutionProvider"]),
                                int(card["input"]), float_answer["input"])
    manifest = {
        "kind": "smear", "task": card["task"], "name": f"edgehema-{card['task'].replace('_', '-')}-{out_dir.name}",
        "version": VERSION,
        "description": f"{card['task']} classifier of single cells trained on {card['data']} train; int8 (QDQ)",
        "classes": classes, "input": {"width": card["input"], "height": card["input"], "layout": "NCHW RGB 0-1"},
        "crop": {"rbc_diameters": card["crop_rbc_diameters"], "rbc_px": card["model_rbc_px"]},
        "unsure_below": unsure_below, "report_as": card.get("report_as", {}), "views": _views(card),
        "split": card.get("split"),
        "sha256": hashlib.sha256((out_dir / SMEAR_GRAPH).read_bytes()).hexdigest(),
        "float_sha256": hashlib.sha256((out_dir / "model-float.onnx").read_bytes()).hexdigest(),
        "training": card,
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                         "activations": "int8 per tensor", "weights": "int8 per channel",
                         "float": ["classifying layer (Gemm) and softmax"],
                         "calibration": f"{CALIBRATION_PER_CLASS} {data.name} train cells per class, "
                                        f"{_spec(card)['calibration']}"},
        "known_answer": answer, "float_known_answer": float_answer,
        "evaluation": {"data": f"{data.name} val", "float": float_report},
        "bytes": {"int8": (out_dir / SMEAR_GRAPH).stat().st_size, "float": (out_dir / "model-float.onnx").stat().st_size},
    }
    write_manifest(out_dir, amend({}, **manifest))


def _add_tflite(out_dir: Path, calib, val_x, val_y, classes_skip, float_p, float_report, float_answer, failures, lines) -> None:
    from edgehema.smear import cells

    from export.smear_detector.tflite import convert_with

    member = convert_with(out_dir / "model-float.onnx", calib.transpose(0, 2, 3, 1), out_dir / "model.tflite")
    member["bytes"] = (out_dir / "model.tflite").stat().st_size
    from edgehema.smear.litert import SmearInterpreter

    engine = SmearInterpreter(out_dir / "model.tflite", member["outputs"], order=("probabilities",))
    member["known_answer"] = cells.known_answer(engine, calib.shape[-1], float_answer["input"])
    write_manifest(out_dir, amend(SmearFolder.load(out_dir).manifest, tflite=member))
    report = _measure(out_dir / "model.tflite", val_x, val_y, classes_skip, float_p, float_report, float_answer,
                      "int8 TFLite", failures, lines)
    write_manifest(out_dir, amend(SmearFolder.load(out_dir).manifest, tflite={**member, "evaluation": report}))
