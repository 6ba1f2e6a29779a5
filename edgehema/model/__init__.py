"""Events -> classes: the model bundle and what runs it.

``bundle`` (the contract: manifest, files, sha256, signature), ``signing`` (trusted keys),
``engine`` (the inference engine a bundle counts on, chosen in order and verified on the bundle's
known answer), ``selftest`` (that known answer), ``backends/`` (one module per engine:
onnxruntime, LiteRT), ``clustering`` (the latent-space stages, with compiled kernels where built),
``classifier`` (one object, one job: events to per-event classes), ``classes`` (the class names),
``shipped/`` (the bundles that ship with edgehema).
"""
