"""Each experiment's figures per analyte from the device's results, judged against the limits.

Input: a checked :class:`~edgehema.validation.plan.Plan`, the result of every file (the dict
``classify --json`` prints, or None for a file that could not be classified) and the
:class:`~edgehema.validation.limits.Limits`. Output: a :class:`Verification`, whose ``to_dict``
is what ``validate --json`` prints. A figure that cannot be computed (a file without a result, a
result without the analyte) is a problem line, and the verdict is then ``fail``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgehema.validation import statistics as st
from edgehema.validation.limits import ANALYTES, Analyte, Limits
from edgehema.validation.plan import Plan, Run

SECTIONS = ("repeatability", "carryover", "linearity", "comparison", "loq")


def _g(x: float | None) -> float | None:
    """Six significant digits: enough for any count, readable in JSON."""
    return None if x is None else float(f"{x:.6g}")


@dataclass
class Verification:
    repeatability: list[dict] = field(default_factory=list)
    carryover: list[dict] = field(default_factory=list)
    linearity: list[dict] = field(default_factory=list)
    comparison: list[dict] = field(default_factory=list)
    loq: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    run: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)

    def items(self):
        for section in SECTIONS:
            for item in getattr(self, section):
                yield section, item

    @property
    def verdict(self) -> str:
        ok = not self.problems and all(item["pass"] for _, item in self.items())
        return "pass" if ok and any(True for _ in self.items()) else "fail"

    def to_dict(self) -> dict:
        out = {s: getattr(self, s) for s in SECTIONS}
        out.update(verdict=self.verdict, problems=self.problems, run=self.run, limits=self.limits)
        return out


class _Values:
    """Reads one analyte of each run's result; a missing one is noted once per file."""

    def __init__(self, results: dict[Path, dict | None], problems: list[str]):
        self.results = results
        self.problems = problems
        self._noted: set = set()

    def of(self, runs: list[Run], analyte: Analyte) -> list[float] | None:
        out = []
        for run in runs:
            result = self.results.get(run.file)
            value = None if result is None else analyte.value(result)
            if value is None:
                key = (run.file, analyte.name if result is not None else None)
                if key not in self._noted:
                    self._noted.add(key)
                    self.problems.append(f"{run.file}: no result" if result is None else
                                         f"{run.file}: its result has no {analyte.name} (is its analyzed volume "
                                         f"or dilution unknown?)")
                return None
            out.append(value)
        return out


def verify(plan: Plan, results: dict[Path, dict | None], limits: Limits, run: dict | None = None) -> Verification:
    """Every experiment of the plan, every analyte its limits name."""
    v = Verification(run=dict(run or {}), limits=limits.to_dict())
    values = _Values(results, v.problems)
    v.repeatability = _repeatability(plan, values, limits)
    v.carryover = _carryover(plan, values, limits)
    v.linearity = _linearity(plan, values, limits)
    v.comparison = _comparison(plan, values, limits)
    v.loq = _loq(plan, values, limits)
    return v


def _repeatability(plan: Plan, values: _Values, limits: Limits) -> list[dict]:
    out = []
    for group, runs in plan.groups("repeatability").items():
        for name, cv_max in limits.per_analyte("repeatability", "cv_max_percent").items():
            xs = values.of(runs, ANALYTES[name])
            if xs is None:
                continue
            s = st.spread(xs)
            cv = s.cv_percent
            out.append({"analyte": name, "group": group, "n": s.n, "mean": _g(s.mean), "sd": _g(s.sd),
                        "cv_percent": _g(cv), "limit_cv_percent": cv_max,
                        "pass": cv is not None and cv <= cv_max, "values": [_g(x) for x in xs]})
    return out


def _carryover(plan: Plan, values: _Values, limits: Limits) -> list[dict]:
    out = []
    for group, runs in plan.groups("carryover").items():
        runs = sorted(runs, key=lambda r: r.order)
        for name, limit in limits.per_analyte("carryover", "max_percent").items():
            xs = values.of(runs, ANALYTES[name])
            if xs is None:
                continue
            high, low = xs[:3], xs[3:]
            item = {"analyte": name, "group": group, "high": [_g(x) for x in high], "low": [_g(x) for x in low],
                    "limit_percent": limit}
            try:
                c = st.carryover_percent(high, low)
            except ValueError as exc:
                item.update(carryover_percent=None, note=str(exc), **{"pass": False})
            else:
                item.update(carryover_percent=_g(c), **{"pass": c <= limit})
            out.append(item)
    return out


def _linearity(plan: Plan, values: _Values, limits: Limits) -> list[dict]:
    runs = plan.of("linearity")
    if not runs:
        return []
    out = []
    floors = limits.per_analyte("linearity", "allowable_floor_per_ul")
    for name, pct in limits.per_analyte("linearity", "allowable_percent").items():
        xs = values.of(runs, ANALYTES[name])
        if xs is None:
            continue
        by_level: dict[float, list[float]] = {}
        for r, x in zip(runs, xs):
            by_level.setdefault(r.fraction, []).append(x)
        fractions = sorted(by_level)
        means = [float(np.mean(by_level[f])) for f in fractions]
        line = st.least_squares(fractions, means)
        levels, worst = [], None
        floor = floors.get(name, 0.0)
        for f, m in zip(fractions, means):
            fitted = float(line.at(f))
            # Where the percentage allows less than the floor, the level is judged by the floor alone
            # (a low level's percentage means little), and its percentage is not the worst one.
            by_percent = pct / 100.0 * abs(fitted) >= floor
            allowed = pct / 100.0 * abs(fitted) if by_percent else floor
            dev_pct = (m - fitted) / fitted * 100.0 if fitted else None
            if by_percent and (worst is None or abs(dev_pct) > abs(worst)):
                worst = dev_pct
            levels.append({"fraction": f, "n": len(by_level[f]), "mean": _g(m), "fitted": _g(fitted),
                           "deviation": _g(m - fitted), "deviation_percent": _g(dev_pct), "allowable": _g(allowed),
                           "judged_by": "percent" if by_percent else "floor", "within": abs(m - fitted) <= allowed})
        out.append({"analyte": name, "slope": _g(line.slope), "intercept": _g(line.intercept), "r2": _g(line.r2),
                    "max_deviation_percent": _g(worst), "allowable_percent": pct, "allowable_floor": floor,
                    "levels": levels, "pass": all(lv["within"] for lv in levels)})
    return out


def _comparison(plan: Plan, values: _Values, limits: Limits) -> list[dict]:
    runs = plan.of("comparison")
    out = []
    allowable = {**limits.per_analyte("comparison", "allowable_percent"),
                 **limits.per_analyte("comparison", "allowable_points")}
    for name, analyte in ANALYTES.items():
        paired = [r for r in runs if name in r.reference]
        if not paired or name not in allowable:
            continue
        ys = values.of(paired, analyte)
        if ys is None:
            continue
        xs = [r.reference[name] for r in paired]
        pb = st.passing_bablok(xs, ys)
        ba = st.bland_altman(ys, xs, relative=analyte.relative)
        lo, hi = ba.loa
        limit = allowable[name]
        out.append({"analyte": name, "n": pb.n, "slope": _g(pb.slope), "slope_ci": [_g(c) for c in pb.slope_ci],
                    "intercept": _g(pb.intercept), "intercept_ci": [_g(c) for c in pb.intercept_ci],
                    "bias": _g(ba.bias), "sd": _g(ba.sd), "loa_low": _g(lo), "loa_high": _g(hi),
                    "difference_unit": "%" if analyte.relative else "points", "allowable": limit,
                    # Informative, not judged: a slope interval without 1 is a proportional difference,
                    # an intercept interval without 0 a constant one (Passing & Bablok 1983).
                    "proportional_difference": not pb.slope_ci[0] <= 1.0 <= pb.slope_ci[1],
                    "constant_difference": not pb.intercept_ci[0] <= 0.0 <= pb.intercept_ci[1],
                    "pass": -limit <= lo and hi <= limit and abs(ba.bias) <= limit / 2,
                    "reference": [_g(x) for x in xs], "values": [_g(y) for y in ys]})
    return out


def _loq(plan: Plan, values: _Values, limits: Limits) -> list[dict]:
    groups = plan.groups("loq")
    if not groups:
        return []
    goal = limits.get("loq", "cv_goal_percent")
    required = limits.per_analyte("loq", "required_per_ul")
    out = []
    for name in limits.get("loq", "analytes"):
        levels = []
        for group, runs in groups.items():
            xs = values.of(runs, ANALYTES[name])
            if xs is None:
                break
            s = st.spread(xs)
            cv = s.cv_percent
            levels.append({"group": group, "n": s.n, "mean": _g(s.mean), "sd": _g(s.sd), "cv_percent": _g(cv),
                           "within": cv is not None and cv <= goal, "values": [_g(x) for x in xs]})
        else:
            levels.sort(key=lambda lv: lv["mean"])
            loq = None
            # The lowest level from which on every level meets the goal (a noisy level above it breaks the run).
            for i in range(len(levels) - 1, -1, -1):
                if not levels[i]["within"]:
                    break
                loq = levels[i]["mean"]
            need = required.get(name)
            out.append({"analyte": name, "levels": levels, "loq": loq, "cv_goal_percent": goal,
                        "required": need, "pass": loq is not None and (need is None or loq <= need)})
    return out
