"""The files of a method verification, made on the simulated instrument, with their plan.

Each experiment is the physical procedure a laboratory runs (docs/validation.md):

* ``repeatability``: one blood sample measured ten times (two samples: a normal one and one with
  few platelets); each run is a fresh draw of the same blood's cells.
* ``carryover``: a high sample three times, then a low one three times. The instrument leaves
  ``carryover`` (a fraction) of each run's suspension in the flow path for the next run, so the
  first low run holds a little of the high sample (the effect the ICSH formula measures).
* ``linearity``: a dilution series of one high sample, fractions 1 to 0.05 of its cells.
* ``comparison``: 40 different samples (normal and pathological) with their true concentrations as
  the reference analyzer's values (a perfect reference method).
* ``loq``: replicates at low platelet levels (5, 10, 20, 40 x10^3/uL) in normal red-cell blood.

The instrument measures a fixed volume, so a run records events in proportion to the sample's
cells (``events`` is the count of a normal sample). Writers are the ordinary ones: the files are
read back by ``classify`` and ``validate`` like an instrument's.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgehema.exceptions import SimulationError
from edgehema.formats import write_sample
from edgehema.simulator.generator import InstrumentSettings, SampleSimulator
from edgehema.simulator.presets import SampleParameters, draw_parameters

EXPERIMENTS = ("repeatability", "carryover", "linearity", "comparison", "loq")
PLAN_COLUMNS = ("file", "experiment", "group", "order", "ref_rbc_per_ul", "ref_plt_per_ul", "ref_retic_percent")
LINEARITY_FRACTIONS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05)
LOQ_PLT_PER_UL = (5e3, 10e3, 20e3, 40e3)
COMPARISON_PATHOLOGIES = (None, "anemia-reticulocytosis", None, "thrombocytopenia", "thrombocytosis", None,
                          "macrocytosis", "microcytosis")
#: Fewest events a run records (a very dilute level still gives a result to judge).
MIN_EVENTS = 2000


class _Runner:
    """One experiment's simulator and the rows it adds to the plan."""

    def __init__(self, experiment: str, out: Path, species: str, seed: int, events: int,
                 instrument: InstrumentSettings | None):
        self.experiment = experiment
        self.folder = out / experiment
        self.folder.mkdir(parents=True, exist_ok=True)
        # Each experiment its own seed: one experiment's files do not depend on which others are made.
        self.sim = SampleSimulator(species, instrument=instrument, seed=seed * 10 + EXPERIMENTS.index(experiment))
        self.rng = np.random.default_rng(seed * 10 + EXPERIMENTS.index(experiment))
        self.species = species
        self.events = events
        self.base = draw_parameters(species, np.random.default_rng(seed))
        self.rows: list[dict] = []

    def events_for(self, p: SampleParameters) -> int:
        """A fixed volume: events in proportion to the cells (those of the normal sample = ``events``)."""
        share = (p.rbc_per_ul + p.plt_per_ul) / (self.base.rbc_per_ul + self.base.plt_per_ul)
        return max(int(round(self.events * share)), MIN_EVENTS)

    def run(self, name: str, p: SampleParameters, group: str = "", order: int | None = None,
            reference: bool = False) -> None:
        sim = self.sim.generate(self.events_for(p), sample_id=f"{self.experiment}-{name}", parameters=p)
        path = self.folder / f"{name}.csv"
        write_sample(sim.sample, path)
        row = {"file": f"{self.experiment}/{path.name}", "experiment": self.experiment, "group": group,
               "order": "" if order is None else str(order)}
        if reference:
            row.update(ref_rbc_per_ul=f"{p.rbc_per_ul:.1f}", ref_plt_per_ul=f"{p.plt_per_ul:.1f}",
                       ref_retic_percent=f"{100 * p.retic_fraction:.4f}")
        self.rows.append(row)


def _high(p: SampleParameters) -> SampleParameters:
    return replace(p, rbc_per_ul=p.rbc_per_ul * 1.3, plt_per_ul=p.plt_per_ul * 2.5)


def _mixed(own: SampleParameters, previous: SampleParameters | None, carryover: float) -> SampleParameters:
    """A run's blood when ``carryover`` of the previous run's suspension is left in the flow path."""
    if previous is None or carryover == 0:
        return own
    rbc = (1 - carryover) * own.rbc_per_ul + carryover * previous.rbc_per_ul
    retic = (1 - carryover) * own.rbc_per_ul * own.retic_fraction + carryover * previous.rbc_per_ul * previous.retic_fraction
    return replace(own, rbc_per_ul=rbc, plt_per_ul=(1 - carryover) * own.plt_per_ul + carryover * previous.plt_per_ul,
                   retic_fraction=retic / rbc)


def _repeatability(r: _Runner, **_) -> None:
    low_plt = replace(r.base, plt_per_ul=r.base.plt_per_ul * 0.3)
    for group, p in (("normal", r.base), ("low-plt", low_plt)):
        for i in range(1, 11):
            r.run(f"{group}-{i:02d}", p, group=group)


def _carryover(r: _Runner, carryover: float, **_) -> None:
    high = _high(r.base)
    low = replace(r.base, rbc_per_ul=r.base.rbc_per_ul * 0.3, plt_per_ul=r.base.plt_per_ul * 0.1)
    previous = None
    for order in range(1, 7):
        p = _mixed(high if order <= 3 else low, previous, carryover)
        r.run(f"{'high' if order <= 3 else 'low'}-{order}", p, group="1", order=order)
        previous = p


def _linearity(r: _Runner, **_) -> None:
    high = _high(r.base)
    for f in LINEARITY_FRACTIONS:
        p = replace(high, rbc_per_ul=high.rbc_per_ul * f, plt_per_ul=high.plt_per_ul * f)
        r.run(f"fraction-{f:.2f}", p, group=f"{f:g}")


def _comparison(r: _Runner, samples: int = 40, **_) -> None:
    for i in range(samples):
        pathology = COMPARISON_PATHOLOGIES[i % len(COMPARISON_PATHOLOGIES)]
        r.run(f"sample-{i + 1:02d}", draw_parameters(r.species, r.rng, pathology), reference=True)


def _loq(r: _Runner, **_) -> None:
    for level in LOQ_PLT_PER_UL:
        p = replace(r.base, plt_per_ul=level)
        for i in range(1, 6):
            r.run(f"plt-{level / 1e3:g}k-{i}", p, group=f"PLT {level / 1e3:g}")


_MAKERS = {"repeatability": _repeatability, "carryover": _carryover, "linearity": _linearity,
           "comparison": _comparison, "loq": _loq}


def write_experiments(out: str | Path, experiments: list[str] | tuple[str, ...] = EXPERIMENTS,
                      species: str = "human", seed: int = 0, events: int = 100_000, carryover: float = 0.003,
                      instrument: InstrumentSettings | None = None) -> Path:
    """Write each experiment's files under ``out/EXPERIMENT/`` and the plan ``out/plan.csv``."""
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise SimulationError(f"unknown experiment(s) {', '.join(unknown)} (one of {', '.join(EXPERIMENTS)}, or all)")
    if not 0 <= carryover < 1:
        raise SimulationError(f"carry-over {carryover} is not a fraction from 0 to 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for experiment in experiments:
        runner = _Runner(experiment, out, species, seed, events, instrument)
        _MAKERS[experiment](runner, carryover=carryover)
        rows += runner.rows
    plan = out / "plan.csv"
    with open(plan, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=PLAN_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return plan
