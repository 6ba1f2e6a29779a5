"""All exceptions edgehema raises on purpose.

Every error a user can cause (a broken file, a wrong profile, a bad option) is an
:class:`EdgehemaError`. The CLI prints ``str(error)`` as one line and exits non-zero;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class EdgehemaError(Exception):
    """Base of every error edgehema raises for bad input or bad configuration."""

    exit_code = 1


class InputFileError(EdgehemaError):
    """A file cannot be read as events: names the file, where in it, and what is wrong.

    ``where`` is a human locator such as ``"row 12"``, ``"byte 58"`` or ``"header"``.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, where: str | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.where = where
        self.problem = problem
        parts = [p for p in (self.path, where) if p]
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class UnknownFormatError(InputFileError):
    """No reader recognises the file."""


class ProfileError(EdgehemaError):
    """An instrument profile is unknown, malformed, or does not match the data."""


class ProfileMismatchError(ProfileError):
    """Events do not carry the features a profile (or a model) expects."""


class SimulationError(EdgehemaError):
    """The simulator was asked for something it cannot produce (unknown preset, bad parameter)."""


class BundleError(EdgehemaError):
    """A model bundle is missing, malformed, corrupt (hash mismatch) or does not fit the data."""


class BackendError(EdgehemaError):
    """An inference backend is unavailable or cannot run the bundle's model."""


class StorageFullError(EdgehemaError):
    """The device's storage cannot take a write (disk full, quota, I/O error): the journal or an
    archive could not be written. The stream keeps results in memory and does not acknowledge them
    until they are stored."""


class LisRejected(EdgehemaError):
    """The LIS answered, and refused the message (HL7 AE/AR/CE/CR, ASTM NAK)."""


class SignatureError(BundleError):
    """A bundle's signature is missing, made by a key the device does not trust, or does not verify;
    or a signing key cannot be read."""


class ValidationPlanError(EdgehemaError):
    """A method-verification plan (or its limits file) cannot be run as written: one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.problems[0] if len(self.problems) == 1 else
                         f"{len(self.problems)} problems in the plan; the first: {self.problems[0]}")
