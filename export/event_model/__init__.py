"""The event model on the workstation: its PyTorch network (``network``), and the device bundles made
from a float bundle: int8 ONNX (``quantize``, with the parity report and gates), TFLite through
onnx2tf (``tflite``), and a data scientist's own PyTorch model as a float bundle (``from_torch``).
Training it is ``export.training``."""
