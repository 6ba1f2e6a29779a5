"""Choosing the inference engine a bundle counts on, as onnxruntime chooses among its providers:
engines tried in order (``auto``: the bundle's own first), each one that loads run on the bundle's
known answer (:mod:`edgehema.model.selftest`), the first that passes kept. An engine named
explicitly that fails is an error; with ``auto`` the next is tried and the reason kept for one
warning line. Fused int8 kernels that miscompute on this CPU are retried unfused (exact, slower);
the compiled latent-space kernels are checked against numpy on the same answer (docs/device.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgehema.exceptions import BackendError
from edgehema.model.backends import create_backend, engine_order
from edgehema.model.backends.onnx_backend import OnnxBackend
from edgehema.model.clustering import kernel_disagreement, use_numpy_kernels
from edgehema.model.selftest import Counter, SelfTest, check, read_known_answer


@dataclass
class EngineChoice:
    backend: object
    selftest: SelfTest | None
    #: Why engines were passed over (not installed, or failed the known answer).
    refused: list[str] = field(default_factory=list)


def open_engine(counter: Counter, name: str, threads: int | None, verify: bool) -> EngineChoice:
    """The first engine of ``engine_order`` that loads and passes the known answer. ``counter``
    (a Classifier being built) runs the answer; its ``backend`` is set to each engine tried."""
    refused: list[str] = []
    bundle = counter.bundle
    for engine in engine_order(bundle, name):
        try:
            counter.backend = create_backend(bundle, engine, threads)
        except BackendError as exc:
            if name != "auto":
                raise
            refused.append(f"{engine}: {exc}")
            continue
        result = check(counter) if verify else None
        if result is not None and not result.passed and can_run_unfused(counter):
            # Fused int8 kernels that miscompute on this CPU: the same graph unfused is exact.
            first = result.line()
            result = run_unfused(counter, threads)
            if result.passed:
                refused.append(f"{first}; running the graph unfused (exact, slower)")
        if result is not None and not result.passed:
            if name != "auto":
                raise BackendError(f"{bundle.name}: {result.line()}")
            refused.append(result.line())
            continue
        if verify:
            why = check_kernels(counter, result.graph if result is not None else None)
            if why:
                refused.append(f"{why}: numpy assigns instead")
        return EngineChoice(counter.backend, result, refused)
    raise BackendError(f"{bundle.name}: no inference engine can count with this bundle: " + "; ".join(refused))


def can_run_unfused(counter: Counter) -> bool:
    """An int8 ONNX graph on onnxruntime, whose fused kernels can be turned off."""
    return counter.backend.name == "onnx" and counter.bundle.settings.target == "onnx-int8" \
        and getattr(counter.backend, "fused", False)


def run_unfused(counter: Counter, threads: int | None = None) -> SelfTest:
    """Switch ``counter`` to the graph without onnxruntime's fused int8 kernels and run the known answer."""
    counter.backend = OnnxBackend(counter.bundle, threads, fused=False)
    return check(counter)


def check_kernels(counter: Counter, out: dict[str, np.ndarray] | None = None) -> str | None:
    """The compiled latent-space kernels against numpy on the known answer's latents (as this engine
    computes them: ``out``, the graph's outputs the self-test kept, else the graph is run). If they
    disagree, numpy assigns from then on (in this process) and the reason is returned; None when
    they agree or are not in use."""
    if counter.bundle.kind != "two-stage-idec-vade":
        return None
    if out is None or "z1" not in out:
        answer = read_known_answer(counter.bundle)
        if answer is None:
            return None
        out = counter.run_graph(answer[0])
    why = kernel_disagreement(out["z1"], out["z2"], counter.centroids, counter.alpha, counter.gmm,
                              counter.stage1_classes, counter.stage2_classes)
    if why:
        use_numpy_kernels()
    return why
