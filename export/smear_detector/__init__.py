"""The smear detector on the workstation: its network (``network``), int8 ONNX (``quantize``, with the
folder it ships in), int8 TFLite (``tflite``) and ``edgehema export`` for a smear model (``export``),
each gated against the float model. Training it is ``export.training.smear_detector``."""
