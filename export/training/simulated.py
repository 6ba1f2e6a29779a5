"""Simulated "other instruments" with a reference CSV, to prove ``edgehema train`` on data the
shipped model was not designed on (docs/training.md, tests, benchmarks/bench_train.py).

The reference CSV holds what a reference analyzer measuring the same aliquot would report: RBC and
PLT concentrations (cells counted x dilution / volume) and RET %, never events per class. A real
reference analyzer adds its own imprecision on top; these figures are the model's error alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgehema.formats import write_sample
from edgehema.simulator import PATHOLOGIES, InstrumentSettings, SampleSimulator

from .reference import write_reference


@dataclass(frozen=True)
class Instrument:
    name: str
    profile: str
    settings: InstrumentSettings
    species: tuple[str, ...]
    pathology_share: float = 0.35
    #: Pathology presets drawn from (None: every one the simulator has).
    pathologies: tuple[str, ...] | None = None
    fmt: str = "csv"
    notes: str = ""
    extra: dict = field(default_factory=dict)


INSTRUMENTS = {
    # The shipped model saw optical-11 at gain 0.95-1.05, dilution 1:350-1:1000, trigger 60 ADC.
    "optical-b": Instrument(
        "optical-b", "optical-11",
        InstrumentSettings(instrument_id="optical-b", gain=1.3, trigger_threshold_adc=110.0, dilution=300.0,
                           gain_ssc=80000.0, gain_fl=1.6, electronic_noise_per_s=30.0, debris_per_ul=150.0),
        ("dog", "cat", "horse"),
        notes="optical-11 features; detector gain x1.3 (side scatter x0.95, fluorescence x2.1 net), trigger 110 ADC, "
              "dilution 1:300 (heavier coincidence), more noise and debris; dog, cat, horse",
    ),
    "sysmex-c": Instrument(
        "sysmex-c", "sysmex-xn-ret",
        InstrumentSettings(instrument_id="sysmex-c", dilution=500.0),
        ("human", "dog", "cattle"), fmt="sysmex-xn",
        notes="sysmex-xn-ret profile (4 features: FSC, SSC, SFL, FSCW), which no shipped model reads; human, dog, cattle",
    ),
}


def simulate_instrument(instrument: str | Instrument, out: Path, n_samples: int, events: int, seed: int,
                        reference_name: str = "reference.csv",
                        vary: Callable[[np.random.Generator], dict] | None = None,
                        keep: Callable[[object], None] | None = None,
                        event_counts: bool = False) -> tuple[list[Path], Path, list[dict]]:
    """``n_samples`` event files of ``instrument`` in ``out`` and their reference CSV; returns the
    files, the CSV and each sample's truth. ``vary(rng)`` gives per-sample changes to the
    instrument's settings (a lab's samples differ in dilution, gain, noise); ``keep`` is handed each
    simulated sample (events with their hidden labels) before it is written. ``event_counts`` adds
    each file's true events per class to the reference CSV (what only a simulator or an expert's
    gates can give)."""
    ins = INSTRUMENTS[instrument] if isinstance(instrument, str) else instrument
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files, rows, truths = [], [], []
    for k in range(n_samples):
        species = ins.species[k % len(ins.species)]
        pathology = None
        if rng.random() < ins.pathology_share:
            names = sorted(ins.pathologies or PATHOLOGIES)
            pathology = names[int(rng.integers(len(names)))]
        settings = ins.settings if vary is None else replace(ins.settings, **vary(rng))
        sim = SampleSimulator(species, pathology, settings, profile=ins.profile, seed=int(seed * 10_000 + k))
        s = sim.generate(events, sample_id=f"{ins.name}-{seed}-{k:04d}")
        if keep is not None:
            keep(s)
        ext = ".116.csv" if ins.fmt == "sysmex-xn" else ".csv"
        files += write_sample(s.sample, out / f"{s.truth['sample_id']}{ext}", ins.fmt)[:1]
        t = s.truth
        per_cell = t["dilution"] / t["volume_ul"]
        rows.append({"sample_id": t["sample_id"], "rbc_per_ul": t["cells"]["rbc"] * per_cell,
                     "plt_per_ul": t["cells"]["plt"] * per_cell, "retic_percent": t["retic_percent"],
                     "dilution": t["dilution"], "volume_ul": t["volume_ul"],
                     **({"events": t["events"]} if event_counts else {})})
        truths.append(t)
    return files, write_reference(out / reference_name, rows), truths
