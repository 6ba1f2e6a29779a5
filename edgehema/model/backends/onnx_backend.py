"""onnxruntime backend: one InferenceSession per bundle, CPU execution provider."""

from __future__ import annotations

import numpy as np

from edgehema.model.bundle import Bundle
from edgehema.exceptions import BackendError


class OnnxBackend:
    name = "onnx"

    def __init__(self, bundle: Bundle, threads: int | None = None, providers: list[str] | None = None,
                 fused: bool = True):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a runtime dependency
            raise BackendError(f"onnxruntime is not installed ({exc})") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not fused:
            # The graph as written, without onnxruntime's fused int8 kernels: exact on every CPU (on
            # x86 without VNNI the fused kernels can saturate; the self-test decides, docs/device.md).
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.fused = fused
        try:
            self.session = ort.InferenceSession(
                str(bundle.model_file), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"{bundle.model_file}: onnxruntime cannot load the model: {str(exc).splitlines()[0][:200]}") from None
        inputs = self.session.get_inputs()
        want_in = bundle.settings.graph_input
        if len(inputs) != 1 or inputs[0].name != want_in:
            raise BackendError(
                f"{bundle.model_file}: model inputs {[i.name for i in inputs]} do not match the manifest's {want_in!r}"
            )
        shape = inputs[0].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(bundle.feature_names)):
            raise BackendError(
                f"{bundle.model_file}: model input shape {shape} does not take {len(bundle.feature_names)} features"
            )
        self.input = want_in
        self.outputs = list(bundle.settings.graph_outputs)
        have = {o.name for o in self.session.get_outputs()}
        missing = [o for o in self.outputs if o not in have]
        if missing:
            raise BackendError(f"{bundle.model_file}: model lacks output(s) {', '.join(missing)} named in the manifest")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {self.input: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.outputs, values))
