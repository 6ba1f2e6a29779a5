"""int8 of the smear detector with onnxruntime.quantization (static, QDQ, per-channel weights),
calibrated on an annotated set's train fields, and the float/int8 parity on its val fields.

    python -m export.smear_detector.quantize build/smear/model-float.onnx --data ../shared/data/bccd --out build/smear/model-int8.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from edgehema.exceptions import BundleError
from edgehema.model.bundle import SmearFolder, amend, smear_stain_reference, write_manifest

#: 1.1.0: weights quantized in a 7-bit range, exact on x86 CPUs without VNNI (1.0.0 was not).
#: 2.0.0: trained on TXL-PBC (every cell boxed, four sources) at the scale stage's scale.
VERSION = "2.0.0"


class Calibration:
    """onnxruntime's CalibrationDataReader over train fields as the device feeds them
    (export.smear_detector.calibration)."""

    def __init__(self, data: Path, input_name: str, n: int = 64, rbc_px: float | None = None):
        from export.smear_detector.calibration import calibration_inputs

        self.items = iter([{input_name: x} for x in calibration_inputs(data, rbc_px, n)])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):  # pragma: no cover - not used by quantize_static's single pass
        pass


def quantize(float_model: Path, data: Path, out: Path, calibration_images: int = 64, keep_float: str = "heatmap",
             reduce_range: bool = True, rbc_px: float | None = None) -> Path:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.parent.mkdir(parents=True, exist_ok=True)
    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(float_model), str(prepared))
    name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    # uint8 activations and int8 weights in a 7-bit range (reduce_range): onnxruntime's fused kernels
    # on x86 without VNNI add pairs of u8 x s8 products in 16 bits, which saturates with full-range
    # weights (model 1.0.0: BCCD val mAP 0.003 on such a CPU, 0.905 on one with VNNI). 7-bit weights
    # cannot saturate, so every CPU computes what the graph says (measured: docs/smear.md).
    # The heat map's sigmoid stays float (``keep_float="sigmoid"``), and with ``"heatmap"`` the 1 x 1
    # convolution feeding it too: a peak's height is its score.
    graph = onnx.load(str(prepared)).graph
    sigmoid = [n for n in graph.node if n.op_type == "Sigmoid"]
    feeding = [n.name for n in graph.node if n.op_type == "Conv" and any(o in s.input for s in sigmoid for o in n.output)]
    heads = [n.name for n in sigmoid] + (feeding if keep_float == "heatmap" else [])
    quantize_static(str(prepared), str(out), Calibration(data, name, calibration_images, rbc_px),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=heads, reduce_range=reduce_range)
    prepared.unlink()
    compact_names(out)
    return out


def compact_names(model: Path) -> int:
    """Give the graph's inner tensors short names and its nodes none; returns the bytes saved.

    quantize_static names every quantized tensor after its float one plus suffixes
    (``/backbone/backbone.3/conv/Conv_output_0_QuantizeLinear_Output``): 33 KB of the 198 KB int8
    file. Names are not arithmetic: the graph's inputs and outputs keep theirs, and the outputs are
    bit-identical (tests/test_smear_model.py). The shape annotations go too; onnxruntime infers them.
    """
    import onnx

    before = model.stat().st_size
    m = onnx.load(str(model))
    g = m.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return short.setdefault(name, f"t{len(short):x}")

    for init in g.initializer:
        init.name = rename(init.name)
    for node in g.node:
        node.name = ""
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    del g.value_info[:]
    onnx.checker.check_model(m)
    onnx.save(m, str(model))
    return before - model.stat().st_size


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


def ship(folder: Path, float_model: Path, int8_model: Path, summary: dict, rbc_px: float | None = None,
         thresholds: dict | None = None, data_name: str = "bccd") -> None:
    import hashlib
    import shutil

    from edgehema.smear.detections import SMEAR_CLASSES
    from edgehema.smear.learned import INPUT, STRIDE, THRESHOLD

    import onnxruntime as ort

    from edgehema.smear.learned import known_answer

    folder.mkdir(parents=True, exist_ok=True)
    try:  # a folder shipped before: its training card stays where no new one comes
        old_training = SmearFolder.load(folder).training
    except BundleError:
        old_training = {}
    old_stain = smear_stain_reference(folder)
    shutil.copyfile(int8_model, folder / "model.onnx")
    if float_model.resolve() != (folder / "model-float.onnx").resolve():
        shutil.copyfile(float_model, folder / "model-float.onnx")
    card = float_model.parent / "training.json"
    # The known answer is the graph's own arithmetic (no fused kernels): an engine whose fused int8
    # kernels disagree with it is caught at load (edgehema.smear.learned.session).
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    answer = known_answer(ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"]))
    manifest = {
        "kind": "smear", "name": f"edgehema-smear-{folder.name}", "version": VERSION,
        "description": f"CenterNet-style cell detector (RBC, WBC, platelets) trained on {data_name} train; int8 (QDQ)",
        "classes": list(SMEAR_CLASSES), "input": {"width": INPUT[0], "height": INPUT[1], "layout": "NCHW RGB 0-1"},
        "stride": STRIDE, "threshold": THRESHOLD,
        "sha256": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest(),
        "float_sha256": hashlib.sha256((folder / "model-float.onnx").read_bytes()).hexdigest(),
        "training": json.loads(card.read_text()) if card.is_file() else old_training,
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activations": "uint8 per tensor",
                         "weights": "int8 per channel, 7-bit range (reduce_range: x86 without VNNI saturates 8-bit)",
                         "float": ["heat-map 1x1 convolution and sigmoid"],
                         "names": "inner tensor names shortened, node names dropped (export.smear_detector.quantize.compact_names)"},
        "known_answer": answer,
        **({"evaluation_bccd_val": {"float": summary["float"], "int8": summary["int8"]}} if rbc_px is None else
           {"evaluation": {"data": f"{data_name} val", "float": summary["float"], "int8": summary["int8"]},
            "scale": {"rbc_px": rbc_px, "method": "edgehema.smear.scale"}}),
        "bytes": {"int8": summary["bytes"][1], "float": summary["bytes"][0]},
    }
    if old_stain:  # the stain the detector was trained on travels with it
        manifest = amend(manifest, stain_reference=old_stain)
    if thresholds:  # chosen on the train split (export.smear_detector.calibration.choose_thresholds)
        manifest = amend(manifest, count_thresholds=thresholds)
    write_manifest(folder, manifest)


if __name__ == "__main__":
    main()
