"""Only the optional compiled parts live here; everything else is in pyproject.toml.

* ``edgehema.formats._fastcsv``: the CSV tokenizer (docs/formats.md).
* ``edgehema.model._fastassign``: the classifier's latent-space kernels (docs/classifier.md).

``optional=True``: where no C compiler is available (a bare device image), the build goes on
without them and edgehema reads CSV with pandas or numpy and assigns events with numpy, with the
same results and errors (the assignment to about 1e-6: tests/test_assign_kernels.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("edgehema.formats._fastcsv", ["edgehema/formats/_fastcsv.c"], extra_compile_args=["-O3"], optional=True),
    Extension("edgehema.model._fastassign", ["edgehema/model/_fastassign.c"], extra_compile_args=["-O3"], optional=True),
])
