"""Event-file formats: one small module per format, chosen by a registry.

Each format module provides ``NAME``, ``sniff(path, head) -> bool``, ``read(path, profile, info)``,
``write(sample, path) -> list[Path]`` and ``describe(path) -> dict``. A new format is one new
module added to :data:`FORMATS`; nothing else changes (as pyserial's URL handlers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from edgehema.exceptions import InputFileError, UnknownFormatError
from edgehema.profiles import Profile
from edgehema.sample import Sample, SampleInfo
from edgehema.formats import csv_format, fcs_format, sysmex_xn

class EventFormat(Protocol):
    """What a format module provides (its functions at module level, as pyserial's URL handlers)."""

    NAME: str

    def sniff(self, path: Path, head: bytes) -> bool: ...

    def read(self, path: Path, profile: Profile | str | None = None, info: SampleInfo | None = None) -> Sample: ...

    def write(self, sample: Sample, path: Path) -> list[Path]: ...

    def describe(self, path: Path, profile: Profile | str | None = None) -> dict: ...


#: Order matters: the most specific sniffers first.
FORMATS: dict[str, EventFormat] = {m.NAME: m for m in (sysmex_xn, fcs_format, csv_format)}


def format_for(path: str | os.PathLike, fmt: str | None = None) -> EventFormat:
    """The format module for ``path``: named explicitly, or recognised from name and first bytes."""
    path = Path(path)
    if fmt is not None:
        try:
            return FORMATS[fmt]
        except KeyError:
            raise UnknownFormatError(path, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})") from None
    if path.is_dir():
        raise InputFileError(path, "is a directory, not an event file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    for module in FORMATS.values():
        if module.sniff(path, head):
            return module
    raise UnknownFormatError(
        path, f"unrecognised file type {path.suffix or '(no extension)'}: expected .csv, .fcs or a Sysmex XN .116.csv"
    )


def read_sample(
    path: str | os.PathLike,
    profile: Profile | str | None = None,
    info: SampleInfo | None = None,
    fmt: str | None = None,
    dataset: int | None = None,
) -> Sample:
    """Read one sample from any supported file. ``info`` fields override what the file says.
    ``dataset`` (1-based) picks a data set of a multi-data-set FCS file (default: the first whose
    channels match the profile)."""
    path = Path(path)
    module = format_for(path, fmt)
    if dataset is None:
        return module.read(path, profile=profile, info=info)
    return module.read(path, profile=profile, info=info, dataset=_dataset_index(module, path, dataset))


def _dataset_index(module: EventFormat, path: Path, dataset: int) -> int:
    if module is not fcs_format:
        raise InputFileError(path, f"--dataset {dataset}: only FCS files hold several data sets")
    if dataset < 1:
        raise InputFileError(path, f"--dataset {dataset}: data sets are numbered from 1")
    return dataset - 1


def write_sample(sample: Sample, path: str | os.PathLike, fmt: str | None = None) -> list[Path]:
    """Write a sample; the format follows ``fmt`` or the file name. Returns every file written."""
    path = Path(path)
    if fmt is None:
        if sysmex_xn.sniff(path, b""):
            fmt = sysmex_xn.NAME
        elif path.suffix.lower() in fcs_format.EXTENSIONS:
            fmt = fcs_format.NAME
        else:
            fmt = csv_format.NAME
    module = FORMATS.get(fmt)
    if module is None:
        raise UnknownFormatError(path, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return module.write(sample, path)


def describe_file(path: str | os.PathLike, fmt: str | None = None, profile: Profile | str | None = None,
                  dataset: int | None = None) -> dict:
    """What a file holds: format, version, events, channels, metadata, matching profile (or why none)."""
    path = Path(path)
    module = format_for(path, fmt)
    if dataset is None:
        out = module.describe(path, profile=profile)
    else:
        out = module.describe(path, profile=profile, dataset=_dataset_index(module, path, dataset))
    out["path"] = str(path)
    return out


__all__ = ["EventFormat", "FORMATS", "describe_file", "format_for", "read_sample", "write_sample"]
