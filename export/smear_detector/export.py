"""``edgehema export`` for smear detectors: a float model (a smear model folder, or a float ONNX file
of the same network: one 1 x 3 x 240 x 320 image in, ``heatmap``, ``size``, ``offset`` out) to a
device folder of kind ``smear`` with int8 ONNX (onnxruntime) and, for ``tflite-int8``, int8 TFLite
(LiteRT) beside it; calibrated on a VOC set's train list, measured on its val list, gated.

Gates (as the event bundles' export has its own): mAP@0.5 within 0.01 of the float model and each
class's total count on val within 1 % (``export.smear_detector.tflite.GATES``). The folder is written either
way, with the failures in its manifest; the command then exits 1.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgehema.model.bundle import SMEAR_GRAPH, SmearFolder, amend, write_manifest

from export.common import ExportError

TARGETS = ("onnx-int8", "tflite-int8")


@dataclass
class SmearExport:
    folder: Path
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def float_source(source: Path) -> Path:
    """The float ONNX model a smear source names: a folder's model-float.onnx, or the file itself."""
    if source.is_dir():
        path = source / "model-float.onnx"
        if not path.is_file():
            raise ExportError(f"{source}: a smear model folder to export from holds model-float.onnx")
        return path
    if source.suffix != ".onnx" or not source.is_file():
        raise ExportError(f"{source}: a smear source is a model folder or a float .onnx file")
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are many types; the file is at fault
        raise ExportError(f"{source}: not an ONNX model onnxruntime can load: {str(exc).splitlines()[0][:200]}") from None
    shape = [d if isinstance(d, int) else None for d in sess.get_inputs()[0].shape]
    outputs = [o.name for o in sess.get_outputs()]
    if shape[1:] != [3, 240, 320] or outputs != ["heatmap", "size", "offset"]:
        raise ExportError(f"{source}: a smear detector takes 1 x 3 x 240 x 320 and gives heatmap, size, offset; this "
                          f"model takes {sess.get_inputs()[0].shape} and gives {', '.join(outputs)}")
    return source


def export_smear(source: Path, target: str, data: Path, out_dir: Path) -> SmearExport:
    from edgehema.exceptions import InputFileError
    from edgehema.smear import learned
    from edgehema.smear.annotations import annotated_set
    from edgehema.smear.evaluate import evaluate

    from export.smear_detector import tflite as smear_tflite
    from export.smear_detector.calibration import choose_thresholds, detections_on, match_thresholds
    from export.smear_detector.quantize import quantize, ship

    if target not in TARGETS:
        raise ExportError(f"--target {target}: a smear detector exports to {' or '.join(TARGETS)}")
    try:
        for split in ("train", "val"):
            annotated_set(data, split)
    except InputFileError as exc:
        raise ExportError(f"a smear export calibrates on an annotated set's train split and measures on its val "
                          f"split: {exc}") from None
    float_model = float_source(Path(source))
    rbc_px = learned.model_rbc_px(str(Path(source)))
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: must not exist or be empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(float_model, out_dir / "model-float.onnx")
    # The training card comes along (ship() reads training.json beside the float model): a folder's
    # from its manifest, a bare file's from beside it. It tells the float model's scale meanwhile.
    card = {}
    if Path(source).is_dir() and (Path(source) / SMEAR_GRAPH).is_file():
        card = SmearFolder.load(source).training
    elif (float_model.parent / "training.json").is_file():
        card = json.loads((float_model.parent / "training.json").read_text())
    if rbc_px is not None:
        card = {**card, "model_rbc_px": rbc_px}
    (out_dir / "training.json").write_text(json.dumps(card))
    # The stain normalisation and the stain_unlike_training check compare with the training stain:
    # that of the set's train split (the images such a detector is trained on). Written first, so
    # that the evaluations below use it; ship() keeps it.
    write_manifest(out_dir, amend({"kind": "smear"}, stain_reference=training_stain(data).to_dict()))
    learned.forget()
    thresholds = None
    if rbc_px is not None:  # a detector of the scale stage counts with thresholds chosen on train
        chosen = choose_thresholds(data, f"model:{out_dir / 'model-float.onnx'}")
        thresholds = chosen["thresholds"]
        (out_dir / "training.json").write_text(json.dumps({**card, "count_thresholds": thresholds,
                                                           "count_thresholds_chosen": chosen}))
        learned.forget()
    int8 = quantize(out_dir / "model-float.onnx", data, out_dir / "int8.onnx", rbc_px=rbc_px)
    float_thresholds, reference = thresholds, None
    if rbc_px is not None:  # the int8 form counts on train what the float model counts there
        reference = detections_on(data, f"model:{out_dir / 'model-float.onnx'}")
        matched = match_thresholds(reference, thresholds, detections_on(data, f"model:{int8}"))
        thresholds = matched["thresholds"]
        (out_dir / "training.json").write_text(json.dumps({**card, "count_thresholds": float_thresholds,
                                                           "count_thresholds_chosen": chosen,
                                                           "int8_count_thresholds_matched": matched}))
        learned.forget()
    reports = [evaluate(data, "val", f"model:{m}") for m in (out_dir / "model-float.onnx", int8)]
    sizes = [(out_dir / "model-float.onnx").stat().st_size, int8.stat().st_size]
    ship(out_dir, out_dir / "model-float.onnx", int8,
         {"float": reports[0], "int8": reports[1], "bytes": sizes, "size_ratio": round(sizes[1] / sizes[0], 3)},
         rbc_px, thresholds, data.name)
    int8.unlink()
    (out_dir / "training.json").unlink(missing_ok=True)
    learned.forget()
    manifest = amend(SmearFolder.load(out_dir).manifest, name=f"edgehema-smear-{out_dir.name}")
    write_manifest(out_dir, manifest)
    parity = smear_tflite.parity(data, f"model:{out_dir / 'model-float.onnx'}", f"model:{out_dir}")
    result = SmearExport(out_dir)
    result.failures += smear_tflite.gate_evaluation(reports[0], reports[1], parity, "int8 ONNX")
    write_manifest(out_dir, amend(manifest, **{"parity" if rbc_px else "parity_bccd_val": parity},
                                  gates={"limits": smear_tflite.GATES, "failed": list(result.failures)}))
    learned.forget()
    result.lines.append(_line("int8 ONNX", reports[1], parity, sizes[1], sizes[0], data.name))
    if target == "tflite-int8":
        member, failures = smear_tflite.add_tflite(out_dir, data, rbc_px, reference, float_thresholds)
        result.failures += failures
        result.lines.append(_line("int8 TFLite", member["evaluation"], member["parity"],
                                  member["bytes"], sizes[0], data.name))
    return result


def training_stain(data: Path):
    import cv2

    from edgehema.smear.annotations import annotated_set

    from edgehema.smear.stain import reference_from_images

    items = annotated_set(data, "train")
    return reference_from_images((cv2.imread(str(i.path)) for i in items), f"{data.name} train ({len(items)} images)")


def _line(what: str, report: dict, parity: dict, size: int, float_size: int, data_name: str = "bccd") -> str:
    return (f"{what}: {data_name} val mAP@0.5 {report['map50']:.3f} ("
            + ", ".join(f"{k.upper()} {v['ap50']:.3f}" for k, v in report["classes"].items())
            + "); total counts vs float " + ", ".join(f"{k.upper()} {v:+.2f} %" for k, v in parity["count_delta_pct"].items())
            + f"; {size:,} bytes ({size / float_size:.2f} of float)")
