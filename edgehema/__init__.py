"""edgehema: real-time classification of hematology-analyzer cell events on the instrument's device.

Data flows one way: bytes or files -> decoded event batches (:class:`Sample`) -> model ->
per-event classes -> per-sample counts -> sinks. The public API is re-exported here.
"""

import os as _os
import sys as _sys

# edgehema's matrix products are tiny (events x 4 latents times 4 x 3 centroids): BLAS threads only
# add contention, and with another busy process on the machine they made the end-of-sample work
# 2-4x slower (measured in `edgehema demo`). The thread count is read when numpy loads, so it is set
# here, before numpy, unless the user or numpy already decided.
if "numpy" not in _sys.modules:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        _os.environ.setdefault(_var, "1")

from ._version import __version__  # noqa: E402
from .classes import CELL_POPULATIONS, EVENT_CLASSES
from .exceptions import (
    BackendError,
    BundleError,
    EdgehemaError,
    InputFileError,
    ProfileError,
    ProfileMismatchError,
    SimulationError,
    UnknownFormatError,
)
from .formats import describe_file, read_sample, write_sample
from .profiles import Feature, Profile, builtin_profiles, default_profile, get_profile, load_profile
from .sample import Sample, SampleInfo
from .bundle import Bundle
from .classifier import Classifier
from .result import SampleResult, classify_sample

__all__ = [
    "BackendError",
    "Bundle",
    "BundleError",
    "Classifier",
    "SampleResult",
    "classify_sample",
    "CELL_POPULATIONS",
    "EVENT_CLASSES",
    "EdgehemaError",
    "Feature",
    "InputFileError",
    "Profile",
    "ProfileError",
    "ProfileMismatchError",
    "Sample",
    "SampleInfo",
    "SimulationError",
    "UnknownFormatError",
    "__version__",
    "builtin_profiles",
    "default_profile",
    "describe_file",
    "get_profile",
    "load_profile",
    "read_sample",
    "write_sample",
]
