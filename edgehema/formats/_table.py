"""Shared helpers for delimited-text event tables (plain CSV and Sysmex XN exports).

The fast path hands the file to a compiled parser (edgehema's own tokenizer, else pandas' C
engine, else numpy's); only when that fails do we walk the file with the csv module to name the
exact line and column, so good files stay fast and bad files still get a precise one-line error.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edgehema._utils.arrays import row_blocks
from edgehema.exceptions import InputFileError
from edgehema.profiles import Profile


#: Longest line accepted, in characters (lines of more than half of it are refused, see
#: check_lines). An event row is a few hundred characters (thousands of columns fit); a longer line
#: means the file is not an event table (binary data, a runaway cell), and reading it whole would
#: take memory the device does not have.
MAX_LINE = 1 << 20
#: Bytes counted at a time when an error needs a line number.
BLOCK_BYTES = 8 << 20
#: Longest piece of a file's content quoted in an error line.
QUOTE = 40
#: Longest column name accepted (instrument exports use names of a few dozen characters).
MAX_NAME = 256


def text_encoding(path: Path) -> str:
    """UTF-16 where the file starts with its byte-order mark (what spreadsheets save as "Unicode
    text"), else UTF-8 with or without a BOM."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def read_header(path: Path) -> tuple[list[str], str]:
    """Return the header's column names and the delimiter (comma, semicolon or tab)."""
    try:
        with open(path, "r", encoding=text_encoding(path), newline="") as fh:
            first = fh.readline(MAX_LINE + 1)
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, not an event file") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not a text file (byte {exc.start} is not UTF-8; a text file in another "
                                   f"encoding must be saved as UTF-8)", "line 1") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    if len(first) > MAX_LINE:
        raise InputFileError(path, f"the header line is longer than {MAX_LINE:,} characters: not an event table", "line 1")
    if "\x00" in first:
        raise InputFileError(path, "the header holds NUL bytes: a binary file (or UTF-16 text without its "
                                   "byte-order mark), not an event table", "line 1")
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


def _locate_bad_cell(path: Path, delimiter: str, names: Sequence[str]) -> InputFileError:
    """Walk the file to find the first cell numpy could not parse (slow path, errors only)."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE))  # lines are at most MAX_LINE long
    encoding = text_encoding(path)
    with open(path, "rb") as fh:
        fh.readline()
        for lineno, raw in enumerate(fh if encoding != "utf-16" else (), start=2):
            if b"\x00" in raw:
                return InputFileError(path, "NUL byte: a binary file, not an event table", f"line {lineno}")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InputFileError(path, f"not a text file (byte {exc.start} of the line is not UTF-8)",
                                      f"line {lineno}")
    with open(path, "r", encoding=encoding, errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        next(reader, None)
        rows = 0
        for lineno, row in enumerate(reader, start=2):
            rows += 1
            if not row or all(not c.strip() for c in row):
                return InputFileError(path, "blank line inside the event table", f"line {lineno}")
            if len(row) != len(names):
                return InputFileError(path, f"{len(row)} cells where the header has {len(names)} columns",
                                      f"line {lineno}")
            for name, cell in zip(names, row):
                try:
                    float(cell)
                except ValueError:
                    return InputFileError(path, f"non-numeric value {_quote(cell.strip())} in column {name}",
                                          f"line {lineno}")
    if rows == 0:
        return InputFileError(path, "no events: the file has a header but no data rows")
    return InputFileError(path, "the event table could not be parsed")


def check_lines(path: Path) -> None:
    """Refuse, before parsing, a file whose lines are too long to be an event table (binary data, a
    2 GB file without a line break): every window of MAX_LINE / 2 bytes must hold a line break.
    ``mmap.find`` stops at the first break of each window, so a normal file costs a few pages; the
    parser then never holds a giant line in memory."""
    import mmap

    half = MAX_LINE // 2
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            size = len(mm)
            for start in range(0, size, half):
                end = min(start + half, size)
                if end - start == half and mm.find(b"\n", start, end) < 0:
                    line_start = mm.rfind(b"\n", 0, start) + 1
                    line = 1 + _count_newlines(mm, line_start)
                    raise InputFileError(path, f"a line of more than {half:,} characters: not an event table",
                                         f"line {line}")
    except ValueError:  # an empty file cannot be mapped; read_header has said so already
        return


def _count_newlines(mm, end: int) -> int:
    n = 0
    for start in range(0, end, BLOCK_BYTES):
        n += mm[start:min(start + BLOCK_BYTES, end)].count(b"\n")
    return n


#: Which parser reads event tables: ``auto`` (edgehema's compiled tokenizer where it was built, else
#: pandas' C engine where pandas is installed and loaded, else numpy), ``native``, ``pandas`` or
#: ``numpy``. Environment: EDGEHEMA_CSV_ENGINE.
CSV_ENGINE = os.environ.get("EDGEHEMA_CSV_ENGINE", "auto").strip().lower()
#: The tokenizer's structural pass (x86-64 with AVX2: separators found 64 bytes at a time, plain
#: cells converted without a branch on their length); EDGEHEMA_CSV_STRUCTURAL=0 keeps to its byte
#: loop, with the same results (tests/test_csv_engines.py), for comparison or if ever in doubt.
STRUCTURAL_PASS = os.environ.get("EDGEHEMA_CSV_STRUCTURAL", "1").strip() != "0"
#: Smaller files go to numpy rather than pandas: pandas' gain there is a few ms (benchmarks/bench_csv.py).
FAST_PARSER_MIN_BYTES = 1 << 20

try:  # built from _fastcsv.c at install time where a C compiler is present (optional)
    from edgehema.formats import _fastcsv
except ImportError:  # pragma: no cover - depends on the build
    _fastcsv = None


def native_available() -> bool:
    """True when the compiled tokenizer was built with this installation."""
    return _fastcsv is not None


def load_fast_parser(threads: int | None = None) -> str:
    """Make the fastest parser ready for the next tables, and return its name.

    The compiled tokenizer needs no loading. pandas' import takes about 0.3 s, which a single small
    file does not win back: batch workers call this once for many files; one file on the command
    line is parsed by numpy when the tokenizer is not built."""
    if CSV_ENGINE == "numpy":
        return "numpy"
    if CSV_ENGINE in ("auto", "native") and native_available():
        return "native"
    try:
        import pandas
    except ImportError:
        return "numpy"
    if threads is not None:  # worker processes use one core each: no parse threads of pandas' own
        try:
            pandas.set_option("mode.max_threads", threads)
        except (KeyError, ValueError, pandas.errors.OptionError):
            pass  # older pandas parse on one thread anyway
    return "pandas"


def csv_reader_state() -> str:
    """Which parser reads event tables here, in words (``edgehema selftest``)."""
    if CSV_ENGINE == "numpy":
        return "numpy (EDGEHEMA_CSV_ENGINE=numpy)"
    if CSV_ENGINE in ("auto", "native") and native_available():
        how = "with its AVX2 structural pass" if STRUCTURAL_PASS and getattr(_fastcsv, "STRUCTURAL", 0) else "byte by byte"
        return f"edgehema's compiled tokenizer (edgehema/formats/_fastcsv.c), {how}"
    import importlib.util

    if importlib.util.find_spec("pandas") is not None:
        return "pandas' C engine for files from 1 MB (the compiled tokenizer was not built), numpy below"
    return "numpy (the compiled tokenizer was not built and pandas is not installed: slower, same results)"


def csv_engine(size: int = FAST_PARSER_MIN_BYTES) -> str:
    """The parser a table of ``size`` bytes gets now."""
    if CSV_ENGINE == "numpy":
        return "numpy"
    if CSV_ENGINE in ("auto", "native") and native_available():
        return "native"
    if CSV_ENGINE in ("pandas", "native"):  # asked for: whatever the size (tests run every file through it)
        return load_fast_parser()
    if size < FAST_PARSER_MIN_BYTES:
        return "numpy"
    return "pandas" if "pandas" in sys.modules else "numpy"


def _parse_native(path: Path, delimiter: str, n_columns: int, dtype, encoding: str) -> np.ndarray | None:
    """The compiled tokenizer on the happy path; None sends the file on to the other parsers (the
    tokenizer accepts only plain numbers, so numpy's results and error lines stay the reference)."""
    import mmap

    if encoding == "utf-16":
        return None
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                start = mm.find(b"\n") + 1
                if start == 0:
                    return None
                # Exactly the room the rows need (one more for a last line without its break): a
                # bound from the file size would reserve up to 3x, which a device that does not
                # overcommit memory may refuse for a large file.
                out = np.empty((_fastcsv.line_breaks(mm, start) + 1) * n_columns, dtype)
                rows = _fastcsv.parse(mm, start, delimiter, n_columns, out, out.dtype == np.float64, STRUCTURAL_PASS)
    except (OSError, ValueError, MemoryError):  # numpy's path reads or refuses the file
        return None
    if rows <= 0:
        return None
    if rows * n_columns != len(out):
        out = out[:rows * n_columns]  # no last empty line: one row fewer than reserved (a view)
    return out.reshape(rows, n_columns)


def _parse_with_pandas(path: Path, delimiter: str, n_columns: int, dtype, encoding: str) -> np.ndarray | None:
    """pandas' C engine on the happy path; None sends the file to the numpy path, whose results
    and error lines are the reference (so both engines accept and refuse exactly the same files)."""
    import warnings

    import pandas as pd

    try:
        with warnings.catch_warnings():
            # A warning is pandas bending the table (a row longer than the header loses a field with
            # only a ParserWarning): make it an error, so that numpy decides about that file.
            warnings.simplefilter("error")
            # header=0 with names, not skiprows=1: skiprows takes pandas off its fast path (17 ms here).
            frame = pd.read_csv(path, sep=delimiter, header=0, names=list(range(n_columns)), index_col=False, dtype=dtype, engine="c",
                                na_filter=False, quoting=csv.QUOTE_NONE, skip_blank_lines=False, encoding=encoding)
    except Exception:  # noqa: BLE001 - any refusal: the numpy path names the problem
        return None
    data = frame.to_numpy()
    # A short row, a blank line or a line of spaces becomes NaN in pandas (blank lines are kept so
    # that they do): numpy decides about those files (no NaN is valid anyway).
    if data.ndim != 2 or data.shape[1] != n_columns or data.dtype != dtype or np.isnan(data).any():
        return None
    return np.ascontiguousarray(data)


def load_numeric_table(path: Path, names: Sequence[str], delimiter: str, dtype=np.float32) -> np.ndarray:
    """Load every data row below the header, shape (rows, len(names)).

    float32 by default: events are float32 anyway and parsing straight into it is faster; a number
    beyond float32's range becomes inf and is then reported as not finite. The file is checked
    first (:func:`check_lines`); the parsers then read it in chunks, so memory stays about the
    size of the result whatever the file holds.
    """
    check_lines(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    encoding = text_encoding(path)
    engine = csv_engine(size)
    if engine == "native":
        data = _parse_native(path, delimiter, len(names), np.dtype(dtype), encoding)
        if data is not None:
            return data
        # Off the tokenizer's happy path (quoted cells, spaces...): pandas still beats numpy there.
        engine = "pandas" if size >= FAST_PARSER_MIN_BYTES and "pandas" in sys.modules else "numpy"
    if engine == "pandas":
        data = _parse_with_pandas(path, delimiter, len(names), np.dtype(dtype), encoding)
        if data is not None and data.shape[0]:
            return data
    try:
        with warnings_as_errors():
            # quotechar: many exporters quote every cell ("123"), as RFC 4180 allows.
            data = np.loadtxt(path, delimiter=delimiter, skiprows=1, dtype=dtype, ndmin=2, encoding=encoding,
                              comments=None, quotechar='"')
    except (ValueError, UserWarning):  # (UnicodeDecodeError is a ValueError)
        raise _locate_bad_cell(path, delimiter, names) from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
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
    if _all_in_range(events, profile):
        return
    finite = np.isfinite(events)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        value = events[r, c]
        # float32 holds up to 3.4e38: a larger number (1e39) arrives here as inf, and is not one.
        what = "inf, or a number beyond float32's 3.4e38," if np.isinf(value) else "nan"
        raise InputFileError(
            path, f"{what} in column {profile.feature_names[c]} (events must be finite float32 numbers)",
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


def _all_in_range(events: np.ndarray, profile: Profile) -> bool:
    """True when every value is finite and inside its column's range: the common case, in two
    reductions per column rather than four whole-table passes (about 5 ms of a 150k-event file).

    The float64 bounds become the float32 values that decide the same comparisons for float32
    events (the lower rounded up, the upper rounded down). A NaN makes the column's minimum NaN,
    which fails the comparison, so NaN and inf always reach the cell-naming check.
    """
    if events.dtype != np.float32 or events.ndim != 2 or events.shape[0] == 0:
        return False
    lo = np.array([f.range[0] for f in profile.features], dtype=np.float64)
    hi = np.array([f.range[1] for f in profile.features], dtype=np.float64)
    if len(lo) != events.shape[1]:
        return False
    with np.errstate(over="ignore"):  # a bound beyond float32 rounds to inf, which is still the right side
        lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
        lo32 = np.where(lo32.astype(np.float64) < lo, np.nextafter(lo32, np.float32(np.inf)), lo32)
        hi32 = np.where(hi32.astype(np.float64) > hi, np.nextafter(hi32, np.float32(-np.inf)), hi32)
    low, high = _column_min_max(events)
    return bool(np.all(low >= lo32) and np.all(high <= hi32))


def _column_min_max(events: np.ndarray, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each column's minimum and maximum, by blocks of ``rows`` rows (7 ms for 150k x 11 straight
    down the columns, 0.6 ms so)."""
    blocks, tail = row_blocks(events, rows)
    if not len(blocks):
        return tail.min(axis=0), tail.max(axis=0)
    low = blocks.min(axis=0).reshape(rows, -1).min(axis=0)
    high = blocks.max(axis=0).reshape(rows, -1).max(axis=0)
    if len(tail):
        low = np.minimum(low, tail.min(axis=0))
        high = np.maximum(high, tail.max(axis=0))
    return low, high


def _fmt(x: float) -> str:
    x = float(x)
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:.6g}"


def format_rows(rows: np.ndarray, formats: Sequence[str], delimiter: str = ",") -> str:
    """Render a 2-D array as delimited text, one %-format per column (float32 needs %.9g to round-trip)."""
    line = delimiter.join(formats) + "\n"
    return "".join([line % tuple(r) for r in rows.tolist()])
