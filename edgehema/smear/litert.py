"""The smear detector's int8 TFLite model run by LiteRT (or tflite-runtime): the same outputs as the
ONNX session, so decoding, tiling and counting do not know which engine ran.

A TFLite model is NHWC (onnx2tf's conversion): the input is the ONNX input transposed, and each
output is matched to the ONNX output of the same name by the manifest's ``tflite.outputs``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgehema.exceptions import BackendError, BundleError
from edgehema.model.backends.held_back import held_back
from edgehema.model.backends import tflite_backend

#: The ONNX model's outputs, in the order ``detect`` reads them.
OUTPUTS = ("heatmap", "size", "offset")


class SmearInterpreter:
    """One LiteRT interpreter on one core; ``run`` takes and gives NCHW arrays like onnxruntime."""

    def __init__(self, path: Path, outputs: dict[str, str] | None, order: tuple[str, ...] = OUTPUTS):

        try:
            Interpreter, self.engine = tflite_backend.load_interpreter_class()  # looked up at call: replaceable in tests
        except BackendError as exc:
            raise BundleError(f"{path}: a TFLite smear model needs LiteRT: {exc}") from None
        with held_back() as last_line:  # LiteRT announces its XNNPACK delegate on every start
            try:
                self._it = Interpreter(model_path=str(path), num_threads=1)
                self._it.allocate_tensors()
            except Exception as exc:  # noqa: BLE001 - the interpreter's errors are many types; the file is at fault
                said = (str(exc).splitlines() or [last_line()])[0]
                raise BundleError(f"{path}: not a TFLite model LiteRT can run: {said[:200]}") from None
        self.path = path
        self._input = self._it.get_input_details()[0]
        self._outputs = {d["name"]: d for d in self._it.get_output_details()}
        self._order = None
        if outputs is not None:
            missing = [k for k in order if outputs.get(k) not in self._outputs]
            if missing:
                raise BundleError(f"{path}: the manifest's tflite.outputs do not name this model's outputs "
                                  f"({', '.join(missing)})")
            self._order = [outputs[k] for k in order]

    def raw(self, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
        """Every output tensor by its TFLite name, for one NHWC float32 input."""
        self._it.set_tensor(self._input["index"], np.ascontiguousarray(x_nhwc, np.float32))
        self._it.invoke()
        return {name: self._it.get_tensor(d["index"]) for name, d in self._outputs.items()}

    def run(self, _names, feeds: dict) -> list[np.ndarray]:
        """onnxruntime's ``InferenceSession.run`` shape: NCHW in, the outputs in ``order`` (images NCHW)."""
        (x,) = feeds.values()
        got = self.raw(x.transpose(0, 2, 3, 1))
        return [got[name].transpose(0, 3, 1, 2) if got[name].ndim == 4 else got[name] for name in self._order]

    def get_inputs(self):
        return [_Named("image")]


class _Named:
    def __init__(self, name: str):
        self.name = name
