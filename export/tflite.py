"""TFLite targets through onnx2tf (the maintained ONNX -> TensorFlow/TFLite converter).

Why onnx2tf: the bundle contract is ONNX, whatever framework trained the model, so converting from
ONNX keeps one path for PyTorch, Keras or scikit-learn models alike; onnx2tf writes float32 and
full-integer TFLite files, calibrated on a representative dataset we give it, and keeps the graph's
layout. Its cost: TensorFlow (about 2 GB installed) on the workstation; the device needs only
LiteRT (``ai-edge-litert``, about 60 MB).

``tflite-int8`` uses onnx2tf's integer quantization with float input and output (``-oiqt``,
per-channel weights, int8 activations, calibration on the bundle's preprocessed calibration
events); ``tflite-fp32`` its float32 file. The TFLite outputs are matched to the ONNX graph's
outputs by value on a calibration batch and the mapping goes into the manifest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgehema.bundle import Bundle

from .quantize import CALIBRATION_BATCH, ExportError

TFLITE_BATCH = 4096


def _onnx2tf() -> list[str]:
    exe = Path(sys.executable).with_name("onnx2tf")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("onnx2tf")
    if not found:
        raise ExportError("the TFLite targets need onnx2tf and tensorflow: pip install 'edgehema[tflite]'")
    return [found]


def convert(bundle: Bundle, samples: list, target: str, out_dir: Path) -> dict:
    """Write ``out_dir/model.tflite``; return the manifest's ``model.tflite`` member."""
    x = np.concatenate([bundle.preprocess(s.events) for s in samples])
    if len(x) < CALIBRATION_BATCH:
        raise ExportError(f"TFLite calibration needs at least {CALIBRATION_BATCH} events")
    rng = np.random.default_rng(0)
    # onnx2tf feeds calibration in batches of the model's batch size: whole batches only.
    n_cal = min(len(x), 5 * TFLITE_BATCH) // TFLITE_BATCH * TFLITE_BATCH
    calib = x[rng.choice(len(x), size=n_cal, replace=False)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "calib.npy", calib)
        # onnx2tf rewrites the model file it is given (simplification): give it a copy.
        shutil.copy2(bundle.model_file, tmp / "model.onnx")
        cmd = _onnx2tf() + ["-i", str(tmp / "model.onnx"), "-o", str(tmp / "tf"), "-b", str(TFLITE_BATCH), "-n"]
        if target == "tflite-int8":
            cmd += ["-oiqt", "-qt", "per-channel", "-cind", bundle.manifest["model"].get("input", "x"),
                    str(tmp / "calib.npy"), "0", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        name = "model_float32.tflite" if target == "tflite-fp32" else "model_integer_quant.tflite"
        produced = tmp / "tf" / name
        if proc.returncode != 0 or not produced.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(f"{bundle.model_file}: onnx2tf could not convert the model: {tail[0][:200]}")
        shutil.copy2(produced, out_dir / "model.tflite")
    mapping = match_outputs(bundle, out_dir / "model.tflite", x[:TFLITE_BATCH])
    return {"file": "model.tflite", "outputs": mapping, "batch": TFLITE_BATCH,
            "converter": "onnx2tf " + _version("onnx2tf") + ", tensorflow " + _version("tensorflow"),
            "quantization": ("int8 weights (per channel) and activations, float32 input and output, calibrated on "
                             f"{len(calib):,} events") if target == "tflite-int8" else None}


def match_outputs(bundle: Bundle, tflite_path: Path, x: np.ndarray) -> dict[str, str]:
    """TFLite output tensor for each ONNX output: the one of the same size closest in value."""
    import onnxruntime as ort
    from edgehema.backends.tflite_backend import load_interpreter_class

    sess = ort.InferenceSession(str(bundle.model_file), providers=["CPUExecutionProvider"])
    names = bundle.manifest["model"]["outputs"]
    ref = dict(zip(names, sess.run(names, {bundle.manifest["model"].get("input", "x"): x})))
    Interpreter, _ = load_interpreter_class()
    it = Interpreter(model_path=str(tflite_path))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], x.astype(np.float32))
    it.invoke()
    outs = {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}
    mapping: dict[str, str] = {}
    for name, r in ref.items():
        best = None
        for tname, v in outs.items():
            if v.size != r.size or tname in mapping.values():
                continue
            err = float(np.abs(v.reshape(r.shape) - r).mean())
            if best is None or err < best[0]:
                best = (err, tname)
        if best is None:
            raise ExportError(f"{tflite_path}: no TFLite output matches ONNX output {name!r}")
        mapping[name] = best[1]
    return mapping


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - a version string is informational
        return "?"
