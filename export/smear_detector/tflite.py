"""int8 TFLite of the smear detector: onnx2tf (ONNX -> TensorFlow SavedModel, NCHW -> NHWC) then
TensorFlow's TFLiteConverter, full integer with BCCD train images as the representative dataset.

The same route as the event bundles' ``tflite-int8`` target (export/event_model/tflite.py): the ONNX float model
is the contract, whatever trained it. The device runs the result with LiteRT (``ai-edge-litert``);
int8 weights per channel and int8 activations, float32 input and outputs, so the runtime feeds and
reads it like the ONNX model (in NHWC).

    python -m export.smear_detector.tflite edgehema/smear/models/bccd-int8 --data ../shared/data/bccd
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgehema.model.backends.held_back import held_back
from edgehema.model.bundle import SmearFolder, amend, write_manifest

from export.common import ExportError
from export.event_model.tflite import _onnx2tf, _version

def calibration_inputs(data: Path, rbc_px: float | None = None) -> np.ndarray:
    """The train fields the converter calibrates on, as the network sees them, NHWC float32."""
    from export.smear_detector.calibration import calibration_inputs as fields

    x = fields(data, rbc_px)
    if not x:
        raise ExportError(f"{data}: no train images to calibrate on")
    return np.concatenate([f.transpose(0, 2, 3, 1) for f in x])


def convert(float_model: Path, data: Path, out: Path, rbc_px: float | None = None) -> dict:
    """Write the int8 TFLite model to ``out``; return the manifest's ``tflite`` member (outputs
    matched to the ONNX graph's names by value)."""
    return convert_with(float_model, calibration_inputs(data, rbc_px), out)


def convert_with(float_model: Path, x: np.ndarray, out: Path) -> dict:
    """``convert`` calibrated on ``x`` (NHWC float32 images as the network sees them): any image model."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copy2(float_model, tmp / "model.onnx")  # onnx2tf rewrites the file it is given
        # For an image input onnx2tf checks its conversion on sample images, which it downloads
        # unless a file of this name is in its working folder: BCCD train images, so nothing is fetched.
        import cv2

        samples = np.stack([cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA) for img in x[:20]])
        np.save(tmp / "calibration_image_sample_data_20x128x128x3_float32.npy", samples.astype(np.float32))
        cmd = _onnx2tf() + ["-i", str(tmp / "model.onnx"), "-o", str(tmp / "tf"), "-osd"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0 or not (tmp / "tf" / "saved_model.pb").exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(f"{float_model}: onnx2tf could not convert the model: {tail[0][:200]}")
        with held_back(1, 2), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorflow as tf

            def representative():
                for i in range(len(x)):
                    yield [x[i:i + 1]]

            c = tf.lite.TFLiteConverter.from_saved_model(str(tmp / "tf"))
            c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.representative_dataset = representative
            c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            try:
                out.write_bytes(c.convert())
            except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds; one line for the user
                raise ExportError(f"{float_model}: TFLite int8 conversion failed: "
                                  f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}") from None
    outputs = match_outputs(float_model, out, x[:2])
    return {"file": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "layout": "NHWC RGB 0-1",
            "outputs": outputs, "converter": f"onnx2tf {_version('onnx2tf')}, tensorflow {_version('tensorflow')}",
            "quantization": {"tool": "tf.lite.TFLiteConverter (full integer, representative dataset)",
                             "activations": "int8", "weights": "int8, per channel", "input_output": "float32",
                             "calibration_images": int(len(x))}}


def match_outputs(float_model: Path, tflite_file: Path, x: np.ndarray) -> dict[str, str]:
    """ONNX output name -> TFLite output tensor name, matched by shape and closest values."""
    import onnxruntime as ort

    from edgehema.smear.litert import SmearInterpreter

    sess = ort.InferenceSession(str(float_model), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {sess.get_inputs()[0].name: x[:1].transpose(0, 3, 1, 2)})))
    got = SmearInterpreter(tflite_file, None).raw(x[:1])
    mapping = {}
    for name, ref in want.items():
        ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
        fits = [(float(np.abs(v - ref).mean()), t) for t, v in got.items() if v.shape == ref.shape and t not in mapping.values()]
        if not fits:
            raise ExportError(f"{tflite_file}: no TFLite output has the shape of {name} {ref.shape}")
        mapping[name] = min(fits)[1]
    return mapping


#: Release gates of the int8 TFLite model against its float source on BCCD val (issue 13): mAP@0.5
#: within 0.01, each class's total count within 1 %, the known answer's peaks within 0.05.
GATES = {"map50": 0.01, "count_pct": 1.0, "known_answer_peak": 0.05}


def parity(data: Path, float_engine: str, int8_engine: str) -> dict:
    """Counts of both engines on every val image of the set: per-class totals and their difference."""
    from edgehema.smear.annotations import annotated_set
    from edgehema.smear.detections import SMEAR_CLASSES
    from edgehema.smear.pipeline import count_image

    ids = [i.path for i in annotated_set(data, "val")]
    totals = {e: {k: 0 for k in SMEAR_CLASSES} for e in (float_engine, int8_engine)}
    differ, differing = 0, {k: 0 for k in SMEAR_CLASSES}
    for i in ids:
        got = [count_image(i, e, wbc="none")[0]["counts"] for e in (float_engine, int8_engine)]
        differ += got[0] != got[1]
        for k in SMEAR_CLASSES:
            differing[k] += abs(got[1][k] - got[0][k])
        for e, c in zip((float_engine, int8_engine), got):
            for k in SMEAR_CLASSES:
                totals[e][k] += c[k]
    return {"images": len(ids), "images_with_other_counts": differ, "float_totals": totals[float_engine],
            "int8_totals": totals[int8_engine], "differing_cells": differing,
            "count_delta_pct": {k: round(100 * (totals[int8_engine][k] - totals[float_engine][k]) / max(totals[float_engine][k], 1), 3)
                                for k in SMEAR_CLASSES}}


def gate_evaluation(float_report: dict, report: dict, parity_report: dict, what: str) -> list[str]:
    """What an int8 model fails of the mAP and count GATES against its float source."""
    failures = []
    if abs(report["map50"] - float_report["map50"]) > GATES["map50"]:
        failures.append(f"{what}: mAP@0.5 {report['map50']:.4f} vs float {float_report['map50']:.4f}")
    for k, v in parity_report["count_delta_pct"].items():
        delta = parity_report["int8_totals"][k] - parity_report["float_totals"][k]
        if abs(delta) > count_limit(parity_report, k):
            failures.append(f"{what}: {k} count {v:+.2f} % vs float ({delta:+d} cells; allowed "
                            f"{count_limit(parity_report, k):.1f})")
    return failures


def count_limit(parity_report: dict, k: str) -> float:
    """Cells by which an int8 form's total of class ``k`` on val may differ from float's: 1 % of
    float's total, or, where the set holds too few cells for 1 % to rise above borderline cells
    flipping one way or the other (a quantized score just above or below the threshold), the 95 %
    range of such flips without a bias: 1.96 x sqrt(cells counted differently, image by image)."""
    pct = GATES["count_pct"] / 100 * parity_report["float_totals"][k]
    differing = (parity_report.get("differing_cells") or {}).get(k)
    return max(pct, 1.96 * math.sqrt(differing)) if differing is not None else pct


def gate(float_report: dict, member: dict) -> list[str]:
    """What the int8 TFLite model fails of GATES against the float model's report (an empty list: it may ship)."""
    failures = gate_evaluation(float_report, member["evaluation"], member["parity"], "int8 TFLite")
    for k, (a, b) in enumerate(zip(member["known_answer"]["heatmap_max"], member["float_known_answer"]["heatmap_max"])):
        if abs(a - b) > GATES["known_answer_peak"]:
            failures.append(f"int8 TFLite: known-answer peak {k}: {a:.3f} vs float {b:.3f}")
    return failures


def add_tflite(folder: Path, data: Path, rbc_px: float | None = None, reference: list | None = None,
               float_thresholds: dict | None = None) -> tuple[dict, list[str]]:
    """Convert ``folder``'s float model, record the ``tflite`` member in its manifest (sha256,
    outputs, known answer, count thresholds matched to the float model's counts on train where
    ``reference`` gives them, val evaluation and parity, gates); returns (member, failures)."""
    import onnxruntime as ort

    from edgehema.smear.evaluate import evaluate
    from edgehema.smear import learned
    from edgehema.smear.learned import known_answer
    from edgehema.smear.litert import SmearInterpreter

    target = folder / "model.tflite"
    member = convert(folder / "model-float.onnx", data, target, rbc_px)
    member["known_answer"] = known_answer(SmearInterpreter(target, member["outputs"]))
    member["float_known_answer"] = known_answer(ort.InferenceSession(str(folder / "model-float.onnx"),
                                                                     providers=["CPUExecutionProvider"]))
    member["bytes"] = target.stat().st_size
    smear = SmearFolder.load(folder)
    write_manifest(folder, amend(smear.manifest, tflite=member))  # the engine below needs its member
    learned.forget()
    if reference is not None and float_thresholds:
        from export.smear_detector.calibration import detections_on, match_thresholds

        matched = match_thresholds(reference, float_thresholds, detections_on(data, f"model:{target}"))
        member["count_thresholds"], member["count_thresholds_matched"] = matched["thresholds"], matched["totals"]
        write_manifest(folder, amend(smear.manifest, tflite=member))
        learned.forget()
    member["evaluation"] = evaluate(data, "val", f"model:{target}")
    member["parity"] = parity(data, f"model:{folder / 'model-float.onnx'}", f"model:{target}")
    failures = gate(smear.evaluation["float"], member)
    member["gates"] = {"limits": GATES, "failed": failures}
    write_manifest(folder, amend(smear.manifest, tflite=member))
    learned.forget()
    return member, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="The smear model folder (model-float.onnx, manifest.json); "
                                              "model.tflite is written into it and recorded in the manifest.")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd")
    args = ap.parse_args()
    member, failures = add_tflite(args.folder, args.data)
    report = member["evaluation"]
    print(json.dumps({k: report[k] for k in ("map50", "classes", "rbc_count_within_5pct", "wbc_all_found", "plt_within_1")},
                     indent=1))
    print(json.dumps(member["parity"], indent=1))
    print(f"model.tflite: {member['bytes']:,} bytes ({member['bytes'] / (args.folder / 'model-float.onnx').stat().st_size:.2f} "
          f"of the float ONNX)")
    if failures:
        raise SystemExit(f"export.smear_detector.tflite: {args.folder / 'model.tflite'}: fails its release gates: {'; '.join(failures)}")


if __name__ == "__main__":
    main()
