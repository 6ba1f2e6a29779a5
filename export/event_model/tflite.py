"""TFLite targets: onnx2tf (the maintained ONNX -> TensorFlow converter) then TensorFlow's TFLite
converter.

Why this path: the bundle contract is ONNX, whatever framework trained the model, so converting from
ONNX keeps one path for PyTorch, Keras or scikit-learn models alike. onnx2tf turns the ONNX graph
into a TensorFlow SavedModel (and writes the float32 TFLite file, ``tflite-fp32``); TensorFlow's own
``TFLiteConverter`` then makes the full-integer model (``tflite-int8``) from that SavedModel with a
representative dataset, the bundle's preprocessed calibration events. Its cost: TensorFlow (about
2 GB installed) on the workstation; the device needs only LiteRT (``ai-edge-litert``, about 60 MB).

``tflite-int8``: int8 weights (per channel) and activations, float32 input and output, like the
ONNX int8 target; the heads (the layers whose results are the latents the clustering reads) stay
float, through the converter's selective quantization (``QuantizationDebugger`` with the heads'
output tensors denylisted). Calibrating on every whole batch of the calibration events (not a
sample of them) and float heads each halved the mean per-sample count delta (docs/export.md).
The TFLite outputs are matched to the ONNX graph's outputs by value on a calibration batch and the
mapping goes into the manifest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgehema.model.backends.held_back import held_back
from edgehema.model.bundle import Bundle

from export.common import CALIBRATION_BATCH, ExportError
from export.graph import head_outputs

TFLITE_BATCH = 4096
#: Calibration batches for the int8 converter at most (one million events; more adds time, not accuracy).
MAX_CALIBRATION_BATCHES = 256


def _onnx2tf() -> list[str]:
    exe = Path(sys.executable).with_name("onnx2tf")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("onnx2tf")
    if not found:
        raise ExportError("the TFLite targets need onnx2tf and tensorflow: pip install 'edgehema[export]'")
    return [found]


def convert(bundle: Bundle, samples: list, target: str, out_dir: Path) -> dict:
    """Write ``out_dir/model.tflite``; return the manifest's ``model.tflite`` member."""
    x = np.concatenate([bundle.preprocess(s.events) for s in samples])
    if len(x) < CALIBRATION_BATCH:
        raise ExportError(f"TFLite calibration needs at least {CALIBRATION_BATCH} events")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # onnx2tf rewrites the model file it is given (simplification): give it a copy.
        shutil.copy2(bundle.model_file, tmp / "model.onnx")
        cmd = _onnx2tf() + ["-i", str(tmp / "model.onnx"), "-o", str(tmp / "tf"), "-b", str(TFLITE_BATCH), "-n", "-osd"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        produced = tmp / "tf" / "model_float32.tflite"
        if proc.returncode != 0 or not produced.exists() or not (tmp / "tf" / "saved_model.pb").exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(f"{bundle.model_file}: onnx2tf could not convert the model: {tail[0][:200]}")
        if target == "tflite-fp32":
            shutil.copy2(produced, out_dir / "model.tflite")
            quantization, float_tensors = None, []
        else:
            # The converter's chatter (Python warnings and C++ logging) is not for the user; its
            # last line is kept for the error message.
            with held_back(1, 2) as last_line, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    quantization, float_tensors = _full_integer(bundle, tmp / "tf", x, out_dir / "model.tflite")
                except ExportError:
                    raise
                except Exception as exc:  # TensorFlow raises many kinds; one line for the user
                    first = (str(exc).strip().splitlines() or [last_line() or type(exc).__name__])[0][:200]
                    raise ExportError(f"{bundle.model_file}: TFLite int8 conversion failed: {first}") from None
    mapping = match_outputs(bundle, out_dir / "model.tflite", x[:TFLITE_BATCH])
    if quantization is not None:
        quantization["float_heads"] = sorted(k for k, v in mapping.items() if v in float_tensors)
    return {"file": "model.tflite", "outputs": mapping, "batch": TFLITE_BATCH,
            "converter": "onnx2tf " + _version("onnx2tf") + ", tensorflow " + _version("tensorflow"),
            "quantization": quantization}


def _full_integer(bundle: Bundle, saved_model: Path, x: np.ndarray, out: Path) -> tuple[dict, list[str]]:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    n_batches = min(len(x) // TFLITE_BATCH, MAX_CALIBRATION_BATCHES)
    calib = x[rng.permutation(len(x))[: n_batches * TFLITE_BATCH]]

    def representative():
        for i in range(0, len(calib), TFLITE_BATCH):
            yield [calib[i : i + TFLITE_BATCH]]

    def converter():
        c = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = representative
        # int8 kernels wherever the model is quantized; float builtins only for the denylisted heads.
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        return c

    # The head outputs' TFLite tensor names, found on a float conversion of the same SavedModel.
    float_file = saved_model.parent / "float.tflite"
    float_file.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())
    float_map = match_outputs(bundle, float_file, x[:TFLITE_BATCH])
    heads = [float_map[name] for name in head_outputs(bundle.model_file) if name in float_map]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=heads)
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=representative,
                                                         debug_options=options)
    out.write_bytes(debugger.get_nondebug_quantized_model())
    return ({"tool": "tf.lite.TFLiteConverter (full integer, representative dataset) on onnx2tf's SavedModel",
             "activations": "int8", "weights": "int8, per channel", "input_output": "float32",
             "calibration_events": int(len(calib))}, _float_computed_outputs(out))


def _float_computed_outputs(path: Path) -> list[str]:
    """Output tensors of a TFLite model computed by a float layer (not dequantized from int8)."""
    from edgehema.model.backends.tflite_backend import load_interpreter_class

    Interpreter, _ = load_interpreter_class()
    it = Interpreter(model_path=str(path))
    producer = {}
    for op in it._get_ops_details():  # noqa: SLF001 - the only way to read the op graph
        for o in op["outputs"]:
            producer[int(o)] = op["op_name"]
    return [d["name"] for d in it.get_output_details() if producer.get(int(d["index"])) not in ("DEQUANTIZE", None)]


def match_outputs(bundle: Bundle, tflite_path: Path, x: np.ndarray) -> dict[str, str]:
    """TFLite output tensor for each ONNX output: the one of the same size closest in value."""
    import onnxruntime as ort
    from edgehema.model.backends.tflite_backend import load_interpreter_class

    sess = ort.InferenceSession(str(bundle.model_file), providers=["CPUExecutionProvider"])
    names = list(bundle.settings.graph_outputs)
    ref = dict(zip(names, sess.run(names, {bundle.settings.graph_input: x})))
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
