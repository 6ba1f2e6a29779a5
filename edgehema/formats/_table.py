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


#: Longest line accepted, in characters. An event row is a few hundred characters (thousands of
#: columns fit); a longer line means the file is not an event table (binary data, a runaway cell),
#: and reading it whole would take memory the device does not have.
MAX_LINE = 1 << 20
#: Bytes read and parsed at a time: memory stays bounded whatever the file's size.
BLOCK_BYTES = 8 << 20
#: Longest piece of a file's content quoted in an error line.
QUOTE = 40
#: Longest column name accepted (instrument exports use names of a few dozen characters).
MAX_NAME = 256


def read_header(path: Path) -> tuple[list[str], str]:
    """Return the header's column names and the delimiter (comma, semicolon or tab)."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as fh:
            first = fh.readline(MAX_LINE + 1)
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, not an event file") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not a text file (byte {exc.start} is not UTF-8)", "line 1") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    if len(first) > MAX_LINE:
        raise InputFileError(path, f"the header line is longer than {MAX_LINE:,} characters: not an event table", "line 1")
    if "\x00" in first:
        raise InputFileError(path, "the header holds NUL bytes: a binary file, not an event table", "line 1")
    if not first.strip():
        raise InputFileError(path, "empty file (no header line)")
    delimiter = max((",", ";", "\t"), key=first.count)
    names = [c.strip().strip('"').strip() for c in first.rstrip("\r\n").split(delimiter)]
    if any(not n for n in names):
        raise InputFileError(path, "header has an empty column name", "line 1")
    long = next((n for n in names if len(n) > MAX_NAME), None)
    if long is not None:
        raise InputFileError(path, f"header has a column name of {len(long):,} characters ({_quote(long)}): "
                                   f"not an event table header", "line 1")
    seen: set[str] = set()
    for n in names:
        if n.lower() in seen:
            raise InputFileError(path, f"header names column {_quote(n)} twice", "line 1")
        seen.add(n.lower())
    return names, delimiter


def _quote(text: str) -> str:
    return repr(text if len(text) <= QUOTE else text[:QUOTE] + "...")


def _locate_bad_cell(path: Path, lines: Sequence[str], first_line: int, delimiter: str,
                     names: Sequence[str]) -> InputFileError:
    """Find the first cell numpy could not parse in a block of lines (slow path, errors only)."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE))
    for lineno, row in enumerate(csv.reader(lines, delimiter=delimiter), start=first_line):
        if not row or all(not c.strip() for c in row):
            return InputFileError(path, "blank line inside the event table", f"line {lineno}")
        if len(row) != len(names):
            return InputFileError(path, f"{len(row)} cells where the header has {len(names)} columns", f"line {lineno}")
        for name, cell in zip(names, row):
            try:
                float(cell)
            except ValueError:
                return InputFileError(path, f"non-numeric value {_quote(cell.strip())} in column {name}", f"line {lineno}")
    return InputFileError(path, "the event table could not be parsed", f"lines {first_line}-{first_line + len(lines) - 1}")


def _line_blocks(path: Path):
    """(first line number, lines) blocks of the data rows below the header, about BLOCK_BYTES each.

    Reads bytes, so a file without line breaks is refused after MAX_LINE bytes, not after it has
    filled the memory."""
    with open(path, "rb") as fh:
        header = fh.readline(MAX_LINE + 1)
        if len(header) > MAX_LINE:
            raise InputFileError(path, f"the header line is longer than {MAX_LINE:,} characters", "line 1")
        lineno, carry = 2, b""
        while True:
            chunk = fh.read(BLOCK_BYTES)
            data = carry + chunk
            if not chunk:
                if data.strip():
                    yield lineno, _decode(path, data, lineno).splitlines()
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) > MAX_LINE:
                    raise InputFileError(path, f"line longer than {MAX_LINE:,} characters: not an event table",
                                         f"line {lineno}")
                carry = data
                continue
            body, carry = data[:cut], data[cut:]
            lines = _decode(path, body, lineno).splitlines()
            if len(carry) > MAX_LINE:
                raise InputFileError(path, f"line longer than {MAX_LINE:,} characters: not an event table",
                                     f"line {lineno + len(lines)}")
            yield lineno, lines
            lineno += len(lines)


def _decode(path: Path, data: bytes, lineno: int) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = lineno + data.count(b"\n", 0, exc.start)
        raise InputFileError(path, f"not a text file (byte {exc.start} of this block is not UTF-8)", f"line {line}") from None
    if "\x00" in text:
        line = lineno + text.count("\n", 0, text.index("\x00"))
        raise InputFileError(path, "NUL byte in the event table: a binary file, not an event table", f"line {line}")
    return text


def load_numeric_table(path: Path, names: Sequence[str], delimiter: str, dtype=np.float32) -> np.ndarray:
    """Load every data row below the header, shape (rows, len(names)), block by block.

    float32 by default: events are float32 anyway and parsing straight into it is faster; a number
    beyond float32's range becomes inf and is then reported as not finite. Memory: the result plus
    one block of text, whatever the file's size.
    """
    parts = []
    try:
        for first, lines in _line_blocks(path):
            if not any(x.strip() for x in lines):
                continue
            try:
                with warnings_as_errors():
                    block = np.loadtxt(lines, delimiter=delimiter, dtype=dtype, ndmin=2, comments=None)
            except (ValueError, UserWarning):
                raise _locate_bad_cell(path, lines, first, delimiter, names) from None
            # numpy skips blank lines (as the reader always has); any other shortfall is an error.
            if block.shape[1] != len(names) or (block.shape[0] != len(lines)
                                                and block.shape[0] != sum(1 for x in lines if x.strip())):
                raise _locate_bad_cell(path, lines, first, delimiter, names)
            parts.append(block)
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    if not parts:
        raise InputFileError(path, "no events: the file has a header but no data rows")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


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
