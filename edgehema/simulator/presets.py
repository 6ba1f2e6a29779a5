"""Species and pathology presets: the blood a simulated sample is drawn from.

Each species preset holds adult reference intervals (central 95 %) for the quantities that shape
RBC/PLT/RET events. A sample draws its own values from them (normal with mean at the interval's
midpoint and sd a quarter of its width, clipped to the interval), so samples differ as patients
do; a pathology preset then shifts the draw. Sources are listed per preset and in
docs/simulator.md; the figures are rounded and meant for simulation, not as clinical limits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..exceptions import SimulationError


@dataclass(frozen=True)
class Interval:
    """A reference interval (central 95 % of healthy adults)."""

    lo: float
    hi: float

    @property
    def mid(self) -> float:
        return 0.5 * (self.lo + self.hi)

    def draw(self, rng: np.random.Generator) -> float:
        return float(np.clip(rng.normal(self.mid, (self.hi - self.lo) / 4.0), self.lo, self.hi))


@dataclass(frozen=True)
class SpeciesPreset:
    name: str
    rbc_1e6_per_ul: Interval
    mcv_fl: Interval
    rdw_cv_percent: Interval
    mchc_g_dl: Interval
    retic_percent: Interval
    plt_1e3_per_ul: Interval
    mpv_fl: Interval
    #: lognormal sigma of platelet volume (platelet volumes are log-normally distributed).
    plt_volume_sigma: float = 0.40
    #: fraction of platelets that are macro/giant platelets, and their volume relative to MPV.
    macroplatelet_fraction: float = 0.01
    macroplatelet_factor: float = 2.5
    #: fraction of RBC that travel in aggregates (doublets, triplets) after dilution.
    rbc_aggregate_fraction: float = 0.0
    #: fraction of platelets that travel in clumps.
    plt_clump_fraction: float = 0.0
    sources: tuple[str, ...] = ()
    notes: str = ""


@dataclass(frozen=True)
class SampleParameters:
    """One sample's drawn blood: what the simulator realises as events."""

    species: str
    pathology: str | None
    rbc_per_ul: float
    mcv_fl: float
    rdw_cv: float  # fraction
    mchc_g_dl: float
    hdw_g_dl: float  # sd of cell haemoglobin concentration
    retic_fraction: float
    retic_immaturity: float  # 1 = healthy maturity mix; > 1 shifts towards immature (stress) reticulocytes
    plt_per_ul: float
    mpv_fl: float
    plt_volume_sigma: float
    macroplatelet_fraction: float
    macroplatelet_factor: float
    rbc_aggregate_fraction: float
    plt_clump_fraction: float

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


_HUMAN_SRC = (
    "Bain BJ, Bates I, Laffan MA (eds). Dacie and Lewis Practical Haematology, 12th ed. Elsevier, 2017: "
    "reference ranges for adults",
    "Briggs C. Quality counts: new parameters in blood cell counting. Int J Lab Hematol 31:277-297, 2009 "
    "(reticulocyte maturity fractions)",
)
_VET_SRC = (
    "Weiss DJ, Wardrop KJ (eds). Schalm's Veterinary Hematology, 6th ed. Wiley-Blackwell, 2010: "
    "species reference intervals",
    "Cornell University College of Veterinary Medicine, eClinPath: hematology reference intervals (ADVIA 2120)",
)

SPECIES: dict[str, SpeciesPreset] = {
    p.name: p
    for p in (
        SpeciesPreset(
            "human",
            rbc_1e6_per_ul=Interval(3.9, 5.7), mcv_fl=Interval(80, 100), rdw_cv_percent=Interval(11.5, 14.5),
            mchc_g_dl=Interval(31.5, 36.0), retic_percent=Interval(0.5, 2.5),
            plt_1e3_per_ul=Interval(150, 410), mpv_fl=Interval(7.5, 11.5),
            plt_volume_sigma=0.40, macroplatelet_fraction=0.01, sources=_HUMAN_SRC,
        ),
        SpeciesPreset(
            "dog",
            rbc_1e6_per_ul=Interval(5.5, 8.5), mcv_fl=Interval(60, 77), rdw_cv_percent=Interval(12.0, 16.0),
            mchc_g_dl=Interval(32, 36), retic_percent=Interval(0.2, 1.5),
            plt_1e3_per_ul=Interval(200, 500), mpv_fl=Interval(7, 13),
            plt_volume_sigma=0.42, macroplatelet_fraction=0.02, sources=_VET_SRC,
        ),
        SpeciesPreset(
            "cat",
            rbc_1e6_per_ul=Interval(5.0, 10.0), mcv_fl=Interval(39, 55), rdw_cv_percent=Interval(14.0, 18.0),
            mchc_g_dl=Interval(30, 36), retic_percent=Interval(0.1, 0.6),
            plt_1e3_per_ul=Interval(300, 800), mpv_fl=Interval(12, 18),
            plt_volume_sigma=0.50, macroplatelet_fraction=0.08, macroplatelet_factor=2.6,
            rbc_aggregate_fraction=0.03, plt_clump_fraction=0.06, sources=_VET_SRC,
            notes="microcytic RBC; large platelets overlapping RBC size; frequent platelet clumping and RBC "
            "doublets/triplets (reference paper, Fig. 2). Aggregate reticulocytes only (punctate ones are "
            "not RNA-rich enough to stain as reticulocytes in a fluorescence channel).",
        ),
        SpeciesPreset(
            "horse",
            rbc_1e6_per_ul=Interval(6.5, 12.5), mcv_fl=Interval(34, 58), rdw_cv_percent=Interval(17.0, 21.0),
            mchc_g_dl=Interval(31, 38), retic_percent=Interval(0.0, 0.1),
            plt_1e3_per_ul=Interval(100, 350), mpv_fl=Interval(4.5, 7.0),
            plt_volume_sigma=0.38, macroplatelet_fraction=0.005, rbc_aggregate_fraction=0.01, sources=_VET_SRC,
            notes="horses do not release reticulocytes into circulation, even in regenerative anaemia; "
            "rouleaux formation shows up as occasional RBC aggregates",
        ),
        SpeciesPreset(
            "cattle",
            rbc_1e6_per_ul=Interval(5.0, 10.0), mcv_fl=Interval(40, 60), rdw_cv_percent=Interval(16.0, 20.0),
            mchc_g_dl=Interval(30, 36), retic_percent=Interval(0.0, 0.1),
            plt_1e3_per_ul=Interval(100, 800), mpv_fl=Interval(4.5, 6.5),
            plt_volume_sigma=0.38, macroplatelet_fraction=0.005, sources=_VET_SRC,
            notes="reticulocytes are absent in healthy cattle",
        ),
    )
}


def _anemia_reticulocytosis(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    return replace(
        p,
        rbc_per_ul=p.rbc_per_ul * rng.uniform(0.40, 0.65),
        retic_fraction=rng.uniform(0.05, 0.15),
        retic_immaturity=rng.uniform(2.0, 4.0),
        mcv_fl=p.mcv_fl * rng.uniform(1.04, 1.12),  # reticulocytes are larger
        rdw_cv=p.rdw_cv + rng.uniform(0.02, 0.05),
    )


def _thrombocytopenia(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    return replace(p, plt_per_ul=rng.uniform(10e3, 80e3), mpv_fl=p.mpv_fl * rng.uniform(1.0, 1.3))


def _thrombocytosis(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    return replace(p, plt_per_ul=p.plt_per_ul * rng.uniform(2.0, 3.5))


def _macrocytosis(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    return replace(p, mcv_fl=p.mcv_fl * rng.uniform(1.18, 1.35), rdw_cv=p.rdw_cv + rng.uniform(0.01, 0.03))


def _microcytosis(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    return replace(
        p,
        mcv_fl=p.mcv_fl * rng.uniform(0.65, 0.80),
        mchc_g_dl=p.mchc_g_dl - rng.uniform(2.0, 4.0),  # iron deficiency: hypochromic as well
        rdw_cv=p.rdw_cv + rng.uniform(0.02, 0.05),
    )


#: Pathologies shift a healthy draw (Dacie and Lewis, ch. on red cell and platelet disorders).
PATHOLOGIES: dict[str, Callable[[SampleParameters, np.random.Generator], SampleParameters]] = {
    "anemia-reticulocytosis": _anemia_reticulocytosis,
    "thrombocytopenia": _thrombocytopenia,
    "thrombocytosis": _thrombocytosis,
    "macrocytosis": _macrocytosis,
    "microcytosis": _microcytosis,
}


def species_preset(name: str) -> SpeciesPreset:
    try:
        return SPECIES[name.lower()]
    except KeyError:
        raise SimulationError(f"unknown species {name!r} (known: {', '.join(SPECIES)})") from None


def draw_parameters(
    species: str, rng: np.random.Generator, pathology: str | None = None, **overrides: float
) -> SampleParameters:
    """Draw one sample's blood from a species preset, shifted by a pathology, then explicit overrides."""
    sp = species_preset(species)
    p = SampleParameters(
        species=sp.name,
        pathology=pathology,
        rbc_per_ul=sp.rbc_1e6_per_ul.draw(rng) * 1e6,
        mcv_fl=sp.mcv_fl.draw(rng),
        rdw_cv=sp.rdw_cv_percent.draw(rng) / 100.0,
        mchc_g_dl=sp.mchc_g_dl.draw(rng),
        hdw_g_dl=2.5,
        retic_fraction=sp.retic_percent.draw(rng) / 100.0,
        retic_immaturity=1.0,
        plt_per_ul=sp.plt_1e3_per_ul.draw(rng) * 1e3,
        mpv_fl=sp.mpv_fl.draw(rng),
        plt_volume_sigma=sp.plt_volume_sigma,
        macroplatelet_fraction=sp.macroplatelet_fraction,
        macroplatelet_factor=sp.macroplatelet_factor,
        rbc_aggregate_fraction=sp.rbc_aggregate_fraction,
        plt_clump_fraction=sp.plt_clump_fraction,
    )
    if pathology:
        try:
            p = PATHOLOGIES[pathology](p, rng)
        except KeyError:
            raise SimulationError(f"unknown pathology {pathology!r} (known: {', '.join(PATHOLOGIES)})") from None
    bad = [k for k in overrides if not hasattr(p, k)]
    if bad:
        raise SimulationError(f"unknown sample parameter(s): {', '.join(bad)}")
    return replace(p, **{k: v for k, v in overrides.items() if v is not None})
