"""The analytes a verification judges and the limits it judges them by.

The defaults are ``limits.toml`` beside this module, each limit with its source; a laboratory's
``--limits FILE.toml`` names only what it changes. An unknown section, key or analyte, or a value
that is not a positive number, is one problem line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgehema._utils.toml import read_toml
from edgehema.exceptions import ValidationPlanError

DEFAULTS = Path(__file__).with_name("limits.toml")


@dataclass(frozen=True)
class Analyte:
    """One result the device reports: where it sits in a result, its plan reference column, and
    whether its differences are relative (percent of the mean) or in its own unit (points)."""

    name: str
    path: tuple[str, ...]
    reference: str
    relative: bool
    unit: str

    def value(self, result: dict) -> float | None:
        v = result
        for key in self.path:
            v = v.get(key) if isinstance(v, dict) else None
        return None if v is None else float(v)


ANALYTES = {
    a.name: a
    for a in (
        Analyte("RBC", ("concentration", "rbc_per_uL"), "ref_rbc_per_ul", True, "/uL"),
        Analyte("PLT", ("concentration", "plt_per_uL"), "ref_plt_per_ul", True, "/uL"),
        Analyte("RET%", ("retic_percent",), "ref_retic_percent", False, "%"),
        Analyte("RET#", ("concentration", "retic_per_uL"), "ref_retic_per_ul", True, "/uL"),
    )
}
REFERENCE_COLUMNS = {a.reference: a for a in ANALYTES.values()}

# section -> key -> kind: "count" (an integer >= 2), "number" (> 0), "per_analyte" (analyte ->
# number > 0), "analytes" (a list of analyte names).
_SCHEMA = {
    "repeatability": {"min_replicates": "count", "cv_max_percent": "per_analyte"},
    "carryover": {"max_percent": "per_analyte"},
    "linearity": {"min_levels": "count", "allowable_percent": "per_analyte", "allowable_floor_per_ul": "per_analyte"},
    "comparison": {"min_samples": "count", "allowable_percent": "per_analyte", "allowable_points": "per_analyte"},
    "loq": {"min_replicates": "count", "cv_goal_percent": "number", "analytes": "analytes",
            "required_per_ul": "per_analyte"},
}


@dataclass(frozen=True)
class Limits:
    """The limits of one verification run, as parsed and checked (``sections[section][key]``)."""

    sections: dict
    source: str

    def get(self, section: str, key: str):
        return self.sections[section][key]

    def per_analyte(self, section: str, key: str) -> dict[str, float]:
        return dict(self.sections[section].get(key, {}))

    def to_dict(self) -> dict:
        return {s: {k: (dict(v) if isinstance(v, dict) else v) for k, v in keys.items()}
                for s, keys in self.sections.items()}


def load_limits(path: str | Path | None = None) -> Limits:
    """The defaults, overlaid with ``path`` (per key; per analyte within a per-analyte key)."""
    sections = _checked(read_toml(DEFAULTS, ValidationPlanError, "limits"), DEFAULTS)
    if path is None:
        return Limits(sections, "defaults")
    own = _checked(read_toml(path, _one_line, "limits"), Path(path))
    for section, keys in own.items():
        for key, value in keys.items():
            if isinstance(value, dict):
                sections[section][key] = {**sections[section].get(key, {}), **value}
            else:
                sections[section][key] = value
    return Limits(sections, str(path))


def _one_line(message: str) -> ValidationPlanError:
    return ValidationPlanError([message])


def _checked(data: dict, path: Path) -> dict:
    problems = []
    out: dict = {s: {} for s in _SCHEMA}
    for section, keys in data.items():
        if section not in _SCHEMA:
            problems.append(f"{path}: unknown section [{section}] (known: {', '.join(_SCHEMA)})")
            continue
        if not isinstance(keys, dict):
            problems.append(f"{path}: [{section}] is not a table")
            continue
        for key, value in keys.items():
            kind = _SCHEMA[section].get(key)
            if kind is None:
                problems.append(f"{path}: [{section}] unknown key {key!r} (known: {', '.join(_SCHEMA[section])})")
                continue
            problem = _check_value(kind, value)
            if problem:
                problems.append(f"{path}: [{section}] {key}: {problem}")
            else:
                out[section][key] = value
    if problems:
        raise ValidationPlanError(problems)
    return out


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _check_value(kind: str, value) -> str | None:
    if kind == "count":
        return None if isinstance(value, int) and not isinstance(value, bool) and value >= 2 else \
            f"{value!r} is not a whole number of at least 2"
    if kind == "number":
        return None if _positive(value) else f"{value!r} is not a positive number"
    if kind == "analytes":
        if not isinstance(value, list) or not value:
            return "not a list of analytes"
        bad = [a for a in value if a not in ANALYTES]
        return f"unknown analyte(s) {', '.join(map(str, bad))} (known: {', '.join(ANALYTES)})" if bad else None
    if not isinstance(value, dict):
        return "not a table of analyte = number"
    bad = [a for a in value if a not in ANALYTES]
    wrong = [a for a, v in value.items() if not _positive(v)]
    said = ([f"unknown analyte(s) {', '.join(bad)} (known: {', '.join(ANALYTES)})"] if bad else []) + \
        ([f"{', '.join(wrong)}: not a positive number"] if wrong else [])
    return "; ".join(said) or None
