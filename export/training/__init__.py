"""Training on an instrument's own data (``edgehema train``; docs/training.md).

Stages, one module each: ``reference`` (the reference CSV) -> ``dataset`` (event files found,
checked, cached) -> ``supervision`` (reference values -> the shares each stage learns) -> ``fit``
(the two-stage model, and the bundle it is written as) -> ``crossval`` (K folds by sample, the
lab's method comparison); ``run`` puts them together, with Optuna tuning. ``shipped_models`` is
the recipe of the shipped event models (simulated data through the same ``train``);
``smear_detector`` trains the smear detector (export/smear_detector holds its network and export).
"""

from .errors import TrainingDataProblems, TrainingError
from .fit import FitSettings
from .reference import read_reference, write_reference
from .run import TrainResult, train

__all__ = ["FitSettings", "TrainResult", "TrainingDataProblems", "TrainingError", "read_reference", "train",
           "write_reference"]
