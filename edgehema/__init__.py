"""edgehema: real-time classification of hematology-analyzer cell events on the instrument's device.

Data flows one way: bytes or files -> decoded event batches (:class:`Sample`) -> model ->
per-event classes -> per-sample counts -> sinks. The public API is re-exported here.
"""

from ._version import __version__
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
