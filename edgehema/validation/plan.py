"""The verification plan: which event file is which run of which experiment.

PLAN.csv has the columns ``file, experiment, group, order`` and optional reference values
``ref_rbc_per_ul, ref_plt_per_ul, ref_retic_percent, ref_retic_per_ul``. Files are relative to the
plan's folder. Every problem of a plan (a missing file, an unknown experiment, too few replicates,
a carry-over sequence out of order) is found before anything is classified, one line each.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from edgehema.exceptions import ValidationPlanError
from edgehema.validation.limits import ANALYTES, REFERENCE_COLUMNS, Limits

EXPERIMENTS = ("repeatability", "carryover", "linearity", "comparison", "loq")
REQUIRED = ("file", "experiment", "group", "order")
#: Carry-over by ICSH: orders 1-3 are the high sample, 4-6 the low one.
CARRYOVER_ORDERS = (1, 2, 3, 4, 5, 6)


@dataclass(frozen=True)
class Run:
    """One row of the plan: one event file measured as one run of an experiment."""

    line: int
    file: Path
    experiment: str
    group: str
    order: int | None
    reference: dict = field(default_factory=dict)  # analyte name -> reference value

    @property
    def fraction(self) -> float:
        """Linearity: the dilution fraction of the high sample (checked when the plan is read)."""
        return float(self.group)


@dataclass(frozen=True)
class Plan:
    path: Path
    runs: tuple[Run, ...]

    def of(self, experiment: str) -> list[Run]:
        return [r for r in self.runs if r.experiment == experiment]

    def groups(self, experiment: str) -> dict[str, list[Run]]:
        out: dict[str, list[Run]] = defaultdict(list)
        for r in self.of(experiment):
            out[r.group].append(r)
        return dict(out)

    @property
    def files(self) -> list[Path]:
        return list(dict.fromkeys(r.file for r in self.runs))


def read_plan(path: str | Path, limits: Limits) -> Plan:
    """Parse and check a plan; raises :class:`ValidationPlanError` listing every problem."""
    path = Path(path)
    text = _read(path)
    first = text.splitlines()[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    problems = [f"{path}: no column {c!r} (the plan's columns: {', '.join(REQUIRED)}, and optional "
                f"{', '.join(REFERENCE_COLUMNS)})" for c in REQUIRED if c not in header]
    problems += [f"{path}: unknown reference column {h!r} (known: {', '.join(REFERENCE_COLUMNS)})"
                 for h in header if h.startswith("ref_") and h not in REFERENCE_COLUMNS]
    if problems:
        raise ValidationPlanError(problems)
    runs = []
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        row = dict(zip(header, (c.strip() for c in cells)))
        run = _run(path, line, row, problems)
        if run is not None:
            runs.append(run)
    if not runs and not problems:
        problems.append(f"{path}: has a header but no runs")
    plan = Plan(path, tuple(runs))
    problems += _experiment_problems(plan, limits)
    if problems:
        raise ValidationPlanError(problems)
    return plan


def _read(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ValidationPlanError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ValidationPlanError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ValidationPlanError([f"{path}: not UTF-8 text (byte {exc.start}); save the plan as CSV UTF-8"]) from None
    if not text.strip():
        raise ValidationPlanError([f"{path}: is empty; expected the header {','.join(REQUIRED)}"])
    return text


def _run(path: Path, line: int, row: dict, problems: list[str]) -> Run | None:
    where = f"{path}: line {line}"
    before = len(problems)
    name, experiment = row.get("file", ""), row.get("experiment", "").lower()
    file = None
    if not name:
        problems.append(f"{where}: no file")
    else:
        file = (path.parent / name) if not Path(name).is_absolute() else Path(name)
        if not file.is_file():
            problems.append(f"{where}: {name}: no such file (files are relative to the plan's folder {path.parent})")
    if experiment not in EXPERIMENTS:
        problems.append(f"{where}: unknown experiment {row.get('experiment', '')!r} (one of {', '.join(EXPERIMENTS)})")
    order = None
    if row.get("order"):
        try:
            order = int(row["order"])
        except ValueError:
            problems.append(f"{where}: order {row['order']!r} is not a whole number")
    reference = {}
    for column, analyte in REFERENCE_COLUMNS.items():
        text = row.get(column, "")
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            problems.append(f"{where}: {column} {text!r} is not a number")
            continue
        if value < 0:
            problems.append(f"{where}: {column} {text} is negative")
        reference[analyte.name] = value
    group = row.get("group", "")
    if experiment == "linearity":
        try:
            fraction = float(group)
            if not 0.0 <= fraction <= 1.0:
                problems.append(f"{where}: linearity group {group!r} is not a dilution fraction from 0 to 1")
        except ValueError:
            problems.append(f"{where}: linearity group {group!r} is not a dilution fraction from 0 to 1")
    elif experiment in ("repeatability", "loq") and not group:
        problems.append(f"{where}: {experiment} needs a group (the sample or level the replicate belongs to)")
    elif experiment == "carryover" and not row.get("order"):
        problems.append(f"{where}: carryover needs an order, 1-3 for the high sample and 4-6 for the low one")
    elif experiment == "comparison" and not any(row.get(c) for c in REFERENCE_COLUMNS):
        problems.append(f"{where}: comparison needs the reference analyzer's values ({', '.join(REFERENCE_COLUMNS)})")
    if len(problems) > before:
        return None
    if experiment == "carryover" and not group:
        group = "1"  # one high/low pair needs no name
    return Run(line, file, experiment, group, order, reference)


def _experiment_problems(plan: Plan, limits: Limits) -> list[str]:
    p = plan.path
    problems = []
    for experiment, key in (("repeatability", "repeatability"), ("loq", "loq")):
        need = limits.get(key, "min_replicates")
        for group, runs in plan.groups(experiment).items():
            if len(runs) < need:
                problems.append(f"{p}: {experiment} group {group!r}: {len(runs)} replicate(s), at least {need} "
                                f"(lines {_lines(runs)})")
    for group, runs in plan.groups("carryover").items():
        orders = Counter(r.order for r in runs)
        twice = sorted(o for o, n in orders.items() if n > 1)
        missing = [o for o in CARRYOVER_ORDERS if o not in orders]
        outside = sorted(o for o in orders if o not in CARRYOVER_ORDERS)
        if twice or missing or outside:
            what = "; ".join(filter(None, (
                f"order {', '.join(map(str, twice))} more than once" if twice else "",
                f"order {', '.join(map(str, missing))} missing" if missing else "",
                f"order {', '.join(map(str, outside))} outside 1-6" if outside else "")))
            problems.append(f"{p}: carryover group {group!r}: the sequence is out of order ({what}); it is "
                            f"the high sample as orders 1, 2, 3, then the low one as 4, 5, 6")
    levels = {r.fraction for r in plan.of("linearity")}
    if plan.of("linearity") and len(levels) < limits.get("linearity", "min_levels"):
        problems.append(f"{p}: linearity: {len(levels)} dilution level(s), at least "
                        f"{limits.get('linearity', 'min_levels')}")
    comparison = plan.of("comparison")
    if comparison:
        need = limits.get("comparison", "min_samples")
        for name in ANALYTES:
            n = sum(name in r.reference for r in comparison)
            if 0 < n < need:
                problems.append(f"{p}: comparison: {n} sample(s) with a reference {name}, at least {need}")
    return problems


def _lines(runs: list[Run]) -> str:
    return ", ".join(str(r.line) for r in runs)
