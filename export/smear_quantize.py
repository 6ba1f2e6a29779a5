"""int8 of the smear detector with onnxruntime.quantization (static, QDQ, per-channel weights),
calibrated on BCCD train images, and the float/int8 parity on BCCD val.

    python -m export.smear_quantize build/smear/model-float.onnx --data ../shared/data/bccd --out build/smear/model-int8.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from edgehema.smear.learned import preprocess


class BccdCalibration:
    """onnxruntime's CalibrationDataReader over the first ``n`` training images."""

    def __init__(self, data: Path, input_name: str, n: int = 64):
        import cv2

        ids = (data / "train.txt").read_text().split()[:n]
        self.items = iter([{input_name: preprocess(cv2.imread(str(data / "JPEGImages" / f"{i}.jpg")))} for i in ids])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):  # pragma: no cover - not used by quantize_static's single pass
        pass


def quantize(float_model: Path, data: Path, out: Path, calibration_images: int = 64, keep_float: str = "heatmap") -> Path:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.parent.mkdir(parents=True, exist_ok=True)
    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(float_model), str(prepared))
    name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    # The heat map's sigmoid stays float (``keep_float="sigmoid"``), and with ``"heatmap"`` the 1 x 1
    # convolution feeding it too: a peak's height is its score.
    graph = onnx.load(str(prepared)).graph
    sigmoid = [n for n in graph.node if n.op_type == "Sigmoid"]
    feeding = [n.name for n in graph.node if n.op_type == "Conv" and any(o in s.input for s in sigmoid for o in n.output)]
    heads = [n.name for n in sigmoid] + (feeding if keep_float == "heatmap" else [])
    quantize_static(str(prepared), str(out), BccdCalibration(data, name, calibration_images),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=heads, extra_options={"ActivationSymmetric": True})
    prepared.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("float_model", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ship", type=Path, help="Also write the shipped model folder here (model.onnx = int8, "
                                              "model-float.onnx, manifest.json).")
    args = ap.parse_args()
    out = quantize(args.float_model, args.data, args.out)
    from edgehema.smear.evaluate import evaluate

    reports = [evaluate(args.data, "val", f"model:{m}") for m in (args.float_model, out)]
    sizes = [args.float_model.stat().st_size, out.stat().st_size]
    summary = {"float": reports[0], "int8": reports[1], "bytes": sizes, "size_ratio": round(sizes[1] / sizes[0], 3)}
    print(json.dumps(summary, indent=1))
    if args.ship:
        ship(args.ship, args.float_model, out, summary)


def ship(folder: Path, float_model: Path, int8_model: Path, summary: dict) -> None:
    import hashlib
    import shutil

    from edgehema.smear.detections import SMEAR_CLASSES
    from edgehema.smear.learned import INPUT, STRIDE, THRESHOLD

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(int8_model, folder / "model.onnx")
    shutil.copyfile(float_model, folder / "model-float.onnx")
    card = float_model.parent / "training.json"
    manifest = {
        "kind": "smear", "name": f"edgehema-smear-{folder.name}", "version": "1.0.0",
        "description": "CenterNet-style cell detector (RBC, WBC, platelets) trained on BCCD train; int8 (QDQ)",
        "classes": list(SMEAR_CLASSES), "input": {"width": INPUT[0], "height": INPUT[1], "layout": "NCHW RGB 0-1"},
        "stride": STRIDE, "threshold": THRESHOLD,
        "sha256": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest(),
        "float_sha256": hashlib.sha256((folder / "model-float.onnx").read_bytes()).hexdigest(),
        "training": json.loads(card.read_text()) if card.is_file() else {},
        "evaluation_bccd_val": {"float": summary["float"], "int8": summary["int8"]},
        "bytes": {"int8": summary["bytes"][1], "float": summary["bytes"][0]},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
