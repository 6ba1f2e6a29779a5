"""Workstation-side model conversion (quantized ONNX / TFLite bundles). Filled by the export issue.

Depends on edgehema's bundle contract; the device runtime never imports this package.
"""
