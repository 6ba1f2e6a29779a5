"""Only the optional compiled CSV tokenizer lives here; everything else is in pyproject.toml.

``optional=True``: where no C compiler is available (a bare device image), the build goes on
without it and edgehema reads CSV with pandas or numpy, with the same results and errors.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("edgehema.formats._fastcsv", ["edgehema/formats/_fastcsv.c"],
                             extra_compile_args=["-O3"], optional=True)])
