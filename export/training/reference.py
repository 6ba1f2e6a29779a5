"""The reference CSV: per sample, the counts another analyzer (or a microscopist) reported.

One row per sample, named by ``sample_id`` (the event file's stem) or ``file`` (its name or path).
Any subset of ``rbc``, ``plt`` (cells/uL, or 10^9/L, 10^12/L, G/L, T/L, 10^3/uL, 10^6/uL given in
the header: ``plt (10^9/L)``), ``retic_percent`` (or ``ret %``), ``dilution``, ``volume_ul``; a
cell may be empty. Comma, semicolon (with decimal commas) or tab separated; UTF-8 with or without
BOM, UTF-16 with BOM, else read as Windows-1252. Every problem is one line; all are collected.

Where the events of a file were counted per class (an expert's gates on each file, or a simulator,
which knows every event), the five columns ``events_noise``, ``events_rbc``, ``events_retic``,
``events_coincidence``, ``events_plt`` give them, all five or none; training then supervises every
share, noise and coincidences included, instead of deriving them (supervision.py).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TrainingError

#: Multipliers to cells per microlitre, by unit as analyzers print them (lower case, no spaces).
UNITS = {
    "": 1.0, "cells/ul": 1.0, "/ul": 1.0, "cells/µl": 1.0, "/µl": 1.0, "per_ul": 1.0, "perul": 1.0,
    "10^9/l": 1e3, "x10^9/l": 1e3, "10*9/l": 1e3, "10e9/l": 1e3, "g/l": 1e3, "10^3/ul": 1e3, "10^3/µl": 1e3,
    "k/ul": 1e3, "k/µl": 1e3,
    "10^12/l": 1e6, "x10^12/l": 1e6, "10*12/l": 1e6, "10e12/l": 1e6, "t/l": 1e6, "10^6/ul": 1e6, "10^6/µl": 1e6,
    "m/ul": 1e6, "m/µl": 1e6,
}
#: Column names (lower case, unit removed) and what they mean.
ALIASES = {
    "sample_id": "sample_id", "sample": "sample_id", "id": "sample_id", "sampleid": "sample_id",
    "file": "file", "filename": "file", "path": "file",
    "rbc": "rbc", "plt": "plt",
    "retic_percent": "retic_percent", "ret_percent": "retic_percent", "retic": "retic_percent",
    "ret": "retic_percent", "ret%": "retic_percent", "retic%": "retic_percent", "ret_pct": "retic_percent",
    "dilution": "dilution", "volume_ul": "volume_ul", "volume": "volume_ul",
}
#: Optional event counts per class, in the classifier's class order (edgehema.model.classes.EVENT_CLASSES).
EVENT_COUNT_CLASSES = ("noise", "rbc", "retic", "coincidence", "plt")
EVENT_COUNT_COLUMNS = tuple(f"events_{c}" for c in EVENT_COUNT_CLASSES)
ALIASES.update({c: c for c in EVENT_COUNT_COLUMNS})
ALIASES.update({f"{c}_events": f"events_{c}" for c in EVENT_COUNT_CLASSES})
COUNT_COLUMNS = ("rbc", "plt")
#: Below this, an RBC in cells/uL is surely in another unit (a human RBC is about 5,000,000/uL).
IMPLAUSIBLE_RBC_PER_UL = 1000.0


class ReferenceProblems(TrainingError):
    """Everything wrong with a reference CSV, one line per problem (raised as one list)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class ReferenceRow:
    """One sample's reference values, in cells/uL and per cent; None where the cell was empty."""

    key: str  # sample_id or file as written
    by: str  # "sample_id" or "file"
    line: int
    rbc_per_ul: float | None = None
    plt_per_ul: float | None = None
    retic_percent: float | None = None
    dilution: float | None = None
    volume_ul: float | None = None
    #: The file's events per class (EVENT_COUNT_CLASSES order), where they were counted.
    event_counts: tuple[float, ...] | None = None

    @property
    def events(self) -> dict[str, float] | None:
        if self.event_counts is None:
            return None
        d = dict(zip(EVENT_COUNT_CLASSES, self.event_counts))
        d["total"] = float(sum(self.event_counts))
        return d

    @property
    def plt_to_rbc(self) -> float | None:
        if self.rbc_per_ul and self.plt_per_ul is not None:
            return self.plt_per_ul / self.rbc_per_ul
        return None

    def given(self) -> list[str]:
        return [k for k in ("rbc_per_ul", "plt_per_ul", "retic_percent", "event_counts") if getattr(self, k) is not None]


@dataclass
class ReferenceTable:
    path: Path
    rows: list[ReferenceRow]
    columns: dict[str, str] = field(default_factory=dict)  # field -> header as written
    encoding: str = "utf-8"

    def column_units(self) -> dict[str, str]:
        return dict(self.columns)


def _decode(raw: bytes, path: Path) -> tuple[str, str]:
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8):].decode("utf-8"), "utf-8 with BOM"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16"), "utf-16"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Spreadsheets on Windows save "cells/µL" as cp1252; the numbers are ASCII either way.
        return raw.decode("cp1252", errors="replace"), "windows-1252"


def _header(name: str) -> tuple[str, str]:
    """'PLT (10^9/L)' -> ('plt', '10^9/l'); 'rbc_per_uL' -> ('rbc', 'per_ul')."""
    text = name.strip().lower().replace("\u00b5", "µ").replace("μ", "µ")
    m = re.match(r"^(.*?)\s*[\(\[]\s*(.*?)\s*[\)\]]\s*$", text)
    base, unit = (m.group(1), m.group(2)) if m else (text, "")
    base = base.strip().replace("-", "_")
    if base.endswith("%"):  # 'RET %', 'retic%'
        base, unit = base.rstrip("% _"), unit or "%"
    base = base.replace(" ", "_")
    unit = unit.replace(" ", "").replace("×", "x")
    if base.endswith("_per_ul") and base[: -len("_per_ul")] in COUNT_COLUMNS:
        base, unit = base[: -len("_per_ul")], unit or "per_ul"
    if base in ("retic", "ret") and unit == "%":
        unit = ""
    return base, unit


def read_reference(path: str | Path) -> ReferenceTable:
    """Parse and check the reference CSV; raises ReferenceProblems listing every problem."""
    path = Path(path)
    text, encoding = _read_text(path)
    first = text.splitlines()[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    fields, columns = _columns(path, next(reader))
    key_field = "sample_id" if "sample_id" in columns else "file"
    rows: list[ReferenceRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        row = _row(path, line, cells, fields, columns, delimiter != ",", key_field, seen, problems)
        if row is not None:
            rows.append(row)
    if problems:
        raise ReferenceProblems(problems)
    if not rows:
        raise ReferenceProblems([f"{path}: has a header but no rows"])
    return ReferenceTable(path, rows, columns, encoding)


def _read_text(path: Path) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ReferenceProblems([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ReferenceProblems([f"{path}: cannot read: {exc.strerror}"]) from None
    text, encoding = _decode(raw, path)
    if not text.strip():
        raise ReferenceProblems([f"{path}: is empty; expected a header line with sample_id or file, and rbc, plt, retic_percent"])
    return text, encoding


def _columns(path: Path, header: list[str]) -> tuple[dict[int, tuple[str, float]], dict[str, str]]:
    """The columns edgehema reads: {index: (meaning, unit scale)} and {meaning: header text}."""
    problems: list[str] = []
    fields: dict[int, tuple[str, float]] = {}
    columns: dict[str, str] = {}
    for i, name in enumerate(header):
        base, unit = _header(name)
        what = ALIASES.get(base)
        if what is None:
            continue  # other columns (comments, HGB...) are allowed and ignored
        if what in columns:
            problems.append(f"{path}: header: two columns mean {what} ({columns[what]!r} and {name.strip()!r})")
            continue
        scale = 1.0
        if what in COUNT_COLUMNS:
            if unit not in UNITS:
                problems.append(f"{path}: header: unit {unit!r} of column {name.strip()!r} is not one edgehema reads "
                                f"(cells/uL, 10^9/L, 10^12/L, G/L, T/L, 10^3/uL, 10^6/uL)")
                continue
            scale = UNITS[unit]
        columns[what] = name.strip()
        fields[i] = (what, scale)
    if "sample_id" not in columns and "file" not in columns:
        problems.append(f"{path}: header: no sample_id or file column (found {', '.join(h.strip() for h in header)})")
    if not any(c in columns for c in ("rbc", "plt", "retic_percent")):
        problems.append(f"{path}: header: none of the columns rbc, plt, retic_percent (found {', '.join(h.strip() for h in header)})")
    some = [c for c in EVENT_COUNT_COLUMNS if c in columns]
    if some and len(some) < len(EVENT_COUNT_COLUMNS):
        problems.append(f"{path}: header: event counts per class need all of {', '.join(EVENT_COUNT_COLUMNS)}; "
                        f"missing {', '.join(c for c in EVENT_COUNT_COLUMNS if c not in columns)}")
    if problems:
        raise ReferenceProblems(problems)
    return fields, columns


def _row(path: Path, line: int, cells: list[str], fields: dict[int, tuple[str, float]], columns: dict[str, str],
         decimal_comma: bool, key_field: str, seen: dict[str, int], problems: list[str]) -> ReferenceRow | None:
    """One row checked: the row, or None with its problems added to ``problems``."""
    values: dict[str, object] = {}
    for i, (what, scale) in fields.items():
        cell = cells[i].strip() if i < len(cells) else ""
        if what in ("sample_id", "file"):
            values[what] = cell
            continue
        if cell == "":
            continue
        number = cell.replace(",", ".") if decimal_comma else cell
        try:
            v = float(number)
        except ValueError:
            problems.append(f"{path}: line {line}: {columns[what]} {cell!r} is not a number")
            continue
        if not math.isfinite(v) or v < 0:
            problems.append(f"{path}: line {line}: {columns[what]} {cell} is negative or not finite")
            continue
        values[what] = v * scale
    key = str(values.get(key_field) or "")
    if not key:
        problems.append(f"{path}: line {line}: empty {key_field}")
        return None
    if key in seen:
        problems.append(f"{path}: line {line}: {key_field} {key!r} again (first on line {seen[key]})")
        return None
    seen[key] = line
    rbc, plt, ret = values.get("rbc"), values.get("plt"), values.get("retic_percent")
    if rbc is not None and rbc < IMPLAUSIBLE_RBC_PER_UL:
        problems.append(f"{path}: line {line}: {columns['rbc']} {rbc:g} cells/uL is implausible: "
                        f"give the unit in the header, e.g. 'rbc (10^12/L)'")
        return None
    if rbc is not None and rbc == 0:
        problems.append(f"{path}: line {line}: rbc is 0")
        return None
    if ret is not None and ret > 100:
        problems.append(f"{path}: line {line}: {columns['retic_percent']} {ret:g} is over 100 %")
        return None
    for k in ("dilution", "volume_ul"):
        if values.get(k) == 0:
            problems.append(f"{path}: line {line}: {k} is 0")
    counts = None
    given = [c for c in EVENT_COUNT_COLUMNS if c in values]
    if given and len(given) < len(EVENT_COUNT_COLUMNS):
        problems.append(f"{path}: line {line}: event counts per class are all five or none; empty: "
                        f"{', '.join(columns[c] for c in EVENT_COUNT_COLUMNS if c not in values)}")
        return None
    if given:
        counts = tuple(float(values[c]) for c in EVENT_COUNT_COLUMNS)
        if sum(counts) <= 0:
            problems.append(f"{path}: line {line}: the event counts per class add up to 0")
            return None
    return ReferenceRow(key, key_field, line, rbc, plt, ret, values.get("dilution"), values.get("volume_ul"), counts)


def write_reference(path: str | Path, rows: list[dict]) -> Path:
    """A reference CSV as analyzers export it (rbc in 10^12/L, plt in 10^9/L): for simulated data.
    Rows with ``events`` (counts per class) add the event-count columns."""
    path = Path(path)
    counted = any(r.get("events") for r in rows)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "rbc (10^12/L)", "plt (10^9/L)", "retic_percent", "dilution", "volume_ul"]
                   + (list(EVENT_COUNT_COLUMNS) if counted else []))
        for r in rows:
            e = r.get("events") or {}
            w.writerow([r["sample_id"],
                        "" if r.get("rbc_per_ul") is None else f"{r['rbc_per_ul'] / 1e6:.4f}",
                        "" if r.get("plt_per_ul") is None else f"{r['plt_per_ul'] / 1e3:.2f}",
                        "" if r.get("retic_percent") is None else f"{r['retic_percent']:.3f}",
                        "" if r.get("dilution") is None else f"{r['dilution']:g}",
                        "" if r.get("volume_ul") is None else f"{r['volume_ul']:.6f}"]
                       + ([f"{e[c]:g}" if c in e else "" for c in EVENT_COUNT_CLASSES] if counted else []))
    return path
