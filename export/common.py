"""What every part of the workstation exporter shares: its error and its batch size. A module of
its own so that ``quantize``, ``tflite`` and ``from_torch`` depend on it, not on each other."""

from __future__ import annotations

from edgehema.exceptions import EdgehemaError

#: Events per calibration batch (also the TFLite model's fixed batch).
CALIBRATION_BATCH = 4096


class ExportError(EdgehemaError):
    """The export cannot be done as asked (bad input, a missing converter, a failed gate)."""
