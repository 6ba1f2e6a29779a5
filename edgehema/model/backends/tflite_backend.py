"""TFLite backend: LiteRT (``ai-edge-litert``), or ``tflite-runtime`` on older boards.

``tflite-runtime`` 2.14 is that package's last release: it is built against numpy 1 and Python
<= 3.11, so with numpy 2 it cannot load; that is detected and said in one line. The interpreter runs
fixed-size batches (the input is resized once to ``BATCH`` rows; a short last batch is padded), and
the bundle's manifest maps the TFLite output tensors to the graph's output names.
"""

from __future__ import annotations

import sys

import numpy as np

from edgehema.model.backends.held_back import held_back
from edgehema.model.bundle import Bundle
from edgehema.exceptions import BackendError

BATCH = 4096


def load_interpreter_class():
    """The TFLite Interpreter class from LiteRT, else tflite-runtime; BackendError with the reason."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError:
        reason = "neither ai-edge-litert (LiteRT) nor tflite-runtime is installed: pip install ai-edge-litert"
        try:
            import importlib.util

            if importlib.util.find_spec("tflite_runtime") is not None:
                reason = (f"tflite-runtime is installed but cannot load with numpy {np.__version__} / Python "
                          f"{sys.version_info.major}.{sys.version_info.minor}: its last release (2.14) needs numpy < 2 "
                          "and Python <= 3.11; install ai-edge-litert instead")
        except (ImportError, ValueError):
            pass
        raise BackendError(reason) from None
    except Exception as exc:  # tflite-runtime built for numpy 1 fails in odd ways under numpy 2
        raise BackendError(
            f"tflite-runtime cannot load here ({type(exc).__name__}: {str(exc)[:120]}); its last release (2.14) "
            "needs numpy < 2 and Python <= 3.11; install ai-edge-litert instead"
        ) from None


class TfliteBackend:
    name = "tflite"

    def __init__(self, bundle: Bundle, threads: int | None = None):
        tfl = bundle.settings.tflite_file
        if not tfl:
            raise BackendError(f"{bundle.path}: bundle has no TFLite model (target {bundle.settings.target}); "
                               "use --backend onnx or a tflite bundle")
        Interpreter, self.engine = load_interpreter_class()
        path = bundle.path / tfl
        try:
            self.interp = Interpreter(model_path=str(path), num_threads=threads or 1)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{path}: the TFLite interpreter cannot load the model: {str(exc)[:200]}") from None
        inp = self.interp.get_input_details()
        if len(inp) != 1 or inp[0]["shape"][-1] != len(bundle.feature_names):
            raise BackendError(f"{path}: TFLite input {[(d['name'], list(d['shape'])) for d in inp]} does not take "
                               f"{len(bundle.feature_names)} features")
        self.input_index = inp[0]["index"]
        self.interp.resize_tensor_input(self.input_index, [BATCH, len(bundle.feature_names)])
        with held_back() as last_line:  # LiteRT announces its XNNPACK delegate on every start
            try:
                self.interp.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                said = last_line() or str(exc)
                raise BackendError(f"{path}: the TFLite interpreter cannot prepare the model: {said[:200]}") from None
        by_name = {d["name"]: d["index"] for d in self.interp.get_output_details()}
        self.outputs = {}
        for out_name, tensor_name in bundle.settings.tflite_outputs.items():
            if tensor_name not in by_name:
                raise BackendError(f"{path}: TFLite output {tensor_name!r} named in the manifest is missing")
            self.outputs[out_name] = by_name[tensor_name]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.outputs}
        for start in range(0, max(n, 1), BATCH):
            chunk = x[start : start + BATCH]
            m = len(chunk)
            if m < BATCH:
                chunk = np.concatenate([chunk, np.zeros((BATCH - m, x.shape[1]), np.float32)])
            self.interp.set_tensor(self.input_index, chunk)
            self.interp.invoke()
            for k, idx in self.outputs.items():
                out = self.interp.get_tensor(idx)
                parts[k].append(out.reshape(BATCH, -1)[:m].squeeze(-1) if out.ndim == 1 or k == "recon_err"
                                else out[:m].copy())
        return {k: np.concatenate(v) for k, v in parts.items()}
