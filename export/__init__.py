"""Workstation side: the reference model's training recipe (``export.train_reference``) and,
with the export issue, conversion to quantized ONNX / TFLite bundles.

Uses edgehema's bundle contract; the device runtime never imports this package. Needs the
``export`` extra (torch).
"""
