"""Workstation side (the ``export`` extra: torch, onnx, TensorFlow): every model the device runs is
made here, one training path per model, and turned into a device folder the runtime verifies.

    export/
      training/        training, one place: the event model (``edgehema train``: reference ->
                       dataset -> supervision -> fit -> crossval -> run), the shipped event models'
                       recipe (shipped_models) and the smear detector's (smear_detector)
      event_model/     the event model's network; float bundle -> int8 ONNX / TFLite (quantize,
                       tflite), a user's PyTorch model -> float bundle (from_torch)
      smear_detector/  the smear detector's network; float -> int8 ONNX / TFLite, gated (quantize,
                       tflite, export)
      graph.py         ONNX graph surgery both exporters share
      common.py        ExportError, the calibration batch

Uses edgehema's bundle contract (edgehema.model.bundle); the device runtime never imports this
package.
"""
