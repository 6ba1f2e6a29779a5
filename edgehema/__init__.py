"""edgehema: real-time classification of hematology-analyzer cell events on the instrument's device.

Data flows one way, one room per stage:

=========================  ==================================================================
stage                      room
=========================  ==================================================================
the domain                 :mod:`edgehema.sample` (Sample, SampleInfo), :mod:`edgehema.profiles`
files -> samples           :mod:`edgehema.formats` (one module per format)
bytes -> samples           :mod:`edgehema.stream` (wire session, journal, archives, runner)
samples from physics       :mod:`edgehema.simulator` (and the emulated instrument)
events -> classes          :mod:`edgehema.model` (bundle, engine, self-test, classifier)
classes -> a result        :mod:`edgehema.counts` (counting, plausibility, result, scattergram)
result -> out              :mod:`edgehema.sinks`, :mod:`edgehema.lis`
images -> counts           :mod:`edgehema.smear`
accuracy                   :mod:`edgehema.evaluation`
method verification        :mod:`edgehema.validation` (``validate``: plan, limits, statistics, report)
many devices               :mod:`edgehema.fleet` (``fleet`` extra)
commands                   :mod:`edgehema.cli`
shared helpers             :mod:`edgehema._utils` (arrays, SQLite, TOML, rate-limited log lines, SVG plots)
=========================  ==================================================================

The public API is re-exported here; every error a user can cause is an :class:`EdgehemaError`.
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

from edgehema._version import __version__  # noqa: E402
from edgehema.exceptions import (  # noqa: E402
    BackendError,
    BundleError,
    EdgehemaError,
    InputFileError,
    ProfileError,
    ProfileMismatchError,
    SimulationError,
    UnknownFormatError,
)
from edgehema.formats import describe_file, read_sample, write_sample  # noqa: E402
from edgehema.model.classes import CELL_POPULATIONS, EVENT_CLASSES  # noqa: E402
from edgehema.profiles import Feature, Profile, builtin_profiles, default_profile, get_profile, load_profile  # noqa: E402
from edgehema.sample import Sample, SampleInfo  # noqa: E402
from edgehema.model.bundle import Bundle  # noqa: E402
from edgehema.model.classifier import Classifier  # noqa: E402
from edgehema.counts.result import SampleResult, classify_sample  # noqa: E402

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
