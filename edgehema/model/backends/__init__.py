"""Inference backends: one interface, engines chosen by name (like onnxruntime's providers).

A backend takes a verified bundle and runs its graph on preprocessed feature batches:
``run(x) -> dict[output name, array]``. ``auto`` picks the first engine that is installed and
can run the bundle. A new engine is one new module registered in :data:`BACKENDS`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edgehema.model.bundle import Bundle
from edgehema.exceptions import BackendError


class Backend(Protocol):
    name: str

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


def _onnx(bundle: Bundle, threads: int | None) -> Backend:
    from edgehema.model.backends.onnx_backend import OnnxBackend

    return OnnxBackend(bundle, threads=threads)


def _tflite(bundle: Bundle, threads: int | None) -> Backend:
    from edgehema.model.backends.tflite_backend import TfliteBackend

    return TfliteBackend(bundle, threads=threads)


BACKENDS = {"onnx": _onnx, "tflite": _tflite}


def engine_order(bundle: Bundle, name: str = "auto") -> list[str]:
    """The engines to try for ``name``: one, or for ``auto`` all, the bundle's own first."""
    if name != "auto":
        if name not in BACKENDS:
            raise BackendError(f"unknown backend {name!r} (known: auto, {', '.join(BACKENDS)})")
        return [name]
    order = list(BACKENDS)
    # A TFLite bundle was made to run on TFLite: try that engine first for it.
    if bundle.settings.target.startswith("tflite"):
        order.sort(key=lambda k: k != "tflite")
    return order


def create_backend(bundle: Bundle, name: str = "auto", threads: int | None = None) -> Backend:
    if name == "auto":
        errors = []
        # A TFLite bundle was made to run on TFLite: try that engine first for it.
        order = list(BACKENDS)
        if bundle.settings.target.startswith("tflite"):
            order.sort(key=lambda k: k != "tflite")
        for key in order:
            factory = BACKENDS[key]
            try:
                return factory(bundle, threads)
            except BackendError as exc:
                errors.append(f"{key}: {exc}")
        raise BackendError("no inference backend can run this bundle: " + "; ".join(errors))
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (known: auto, {', '.join(BACKENDS)})")
    return BACKENDS[name](bundle, threads)


__all__ = ["BACKENDS", "Backend", "create_backend", "engine_order"]
