"""Shared helpers for delimited-text event tables (plain CSV and Sysmex XN exports).

The fast path hands the file to numpy's C parser; only when that fails do we walk the
file with the csv module to name the exact line and column, so good files stay fast and
bad files still get a precise one-line error.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..exceptions import InputFileError
from ..profiles import Profile


def read_header(path: Path) -> tuple[list[str], str]:
    """Return the header's column names and the delimiter (comma, semicolon or tab)."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, not an event file") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not a text file (byte {exc.start} is not UTF-8)", "line 1") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    if not first.strip():
        raise InputFileError(path, "empty file (no header line)")
    delimiter = max((",", ";", "\t"), key=first.count)
    names = [c.strip().strip('"').strip() for c in first.rstrip("\r\n").split(delimiter)]
    if any(not n for n in names):
        raise InputFileError(path, "header has an empty column name", "line 1")
    seen: set[str] = set()
    for n in names:
        if n.lower() in seen:
            raise InputFileError(path, f"header names column {n!r} twice", "line 1")
        seen.add(n.lower())
    return names, delimiter


def _locate_bad_cell(path: Path, delimiter: str, names: Sequence[str]) -> InputFileError:
    """Walk the file to find the first cell numpy could not parse (slow path, errors only)."""
    with open(path, "r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        next(reader, None)
        rows = 0
        for lineno, row in enumerate(reader, start=2):
            rows += 1
            if not row or all(not c.strip() for c in row):
                return InputFileError(path, "blank line inside the event table", f"line {lineno}")
            if len(row) != len(names):
                return InputFileError(
                    path, f"{len(row)} cells where the header has {len(names)} columns", f"line {lineno}"
                )
            for name, cell in zip(names, row):
                try:
                    float(cell)
                except ValueError:
                    return InputFileError(
                        path, f"non-numeric value {cell.strip()[:40]!r} in column {name}", f"line {lineno}"
                    )
    if rows == 0:
        return InputFileError(path, "no events: the file has a header but no data rows")
    return InputFileError(path, "the event table could not be parsed")


def load_numeric_table(path: Path, names: Sequence[str], delimiter: str, dtype=np.float32) -> np.ndarray:
    """Load every data row below the header, shape (rows, len(names)).

    float32 by default: events are float32 anyway and parsing straight into it is faster; a number
    beyond float32's range becomes inf and is then reported as not finite.
    """
    try:
        with warnings_as_errors():
            data = np.loadtxt(path, delimiter=delimiter, skiprows=1, dtype=dtype, ndmin=2, encoding="utf-8-sig")
    except (ValueError, UserWarning):
        raise _locate_bad_cell(path, delimiter, names) from None
    if data.shape[0] == 0:
        raise InputFileError(path, "no events: the file has a header but no data rows")
    if data.shape[1] != len(names):
        raise _locate_bad_cell(path, delimiter, names)
    return data


class warnings_as_errors:
    """numpy warns (rather than fails) on an empty table; turn that into the error path."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", UserWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def check_events(
    events: np.ndarray, profile: Profile, path: Path, locate: str = "line", first_index: int = 2
) -> None:
    """Reject NaN/inf and values outside the profile's declared ranges, naming the first bad cell.

    ``locate`` and ``first_index`` say how rows are named: ``line`` numbers counting the header
    for text files, ``event`` numbers for binary files.
    """
    finite = np.isfinite(events)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise InputFileError(
            path, f"{events[r, c]} in column {profile.feature_names[c]} (events must be finite float32 numbers)",
            f"{locate} {r + first_index}",
        )
    lo = np.array([f.range[0] for f in profile.features])
    hi = np.array([f.range[1] for f in profile.features])
    bad = (events < lo) | (events > hi)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        f = profile.features[c]
        raise InputFileError(
            path,
            f"value {_fmt(events[r, c])} in column {f.name} is outside the range "
            f"[{_fmt(f.range[0])}, {_fmt(f.range[1])}] {f.unit} that profile {profile.name} declares",
            f"{locate} {r + first_index}",
        )


def _fmt(x: float) -> str:
    x = float(x)
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:.6g}"


def format_rows(rows: np.ndarray, formats: Sequence[str], delimiter: str = ",") -> str:
    """Render a 2-D array as delimited text, one %-format per column (float32 needs %.9g to round-trip)."""
    line = delimiter.join(formats) + "\n"
    return "".join([line % tuple(r) for r in rows.tolist()])
