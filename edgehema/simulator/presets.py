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

from edgehema.exceptions import SimulationError


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
    #: reticulocyte RNA signal relative to the human/dog reference (stain uptake differs by species).
    retic_rna_factor: float = 1.0
    #: axis ratio of red cells that do not sphere in the diluent (camelids: elliptical cells); 1 = sphere.
    rbc_elongation: float = 1.0
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
    # Species traits and interferences (docs/simulator.md, "Interferences"); zero means absent.
    retic_rna_factor: float = 1.0
    rbc_elongation: float = 1.0
    #: mean cells per RBC aggregate (2.3: doublets and triplets; cold agglutinins make larger ones).
    rbc_aggregate_size: float = 2.3
    #: platelet-sized cell debris and lysis fragments per uL of blood (some carry nucleic acid).
    lysis_debris_per_ul: float = 0.0
    #: fraction of red cells that are fragments (schistocytes): a tenth to a half of a red cell's volume.
    schistocyte_fraction: float = 0.0
    #: lipid droplets (chylomicrons and larger) per uL of blood.
    lipid_per_ul: float = 0.0

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


_HUMAN_SRC = (
    "Bain BJ, Bates I, Laffan MA (eds). Dacie and Lewis Practical Haematology, 12th ed. Elsevier, 2017: "
    "reference ranges for adults",
    "Briggs C. Quality counts: new parameters in blood cell counting. Int J Lab Hematol 31:277-297, 2009 "
    "(reticulocyte maturity fractions)",
)
_SMALL_RUMINANT_SRC = (
    "Weiss DJ, Wardrop KJ (eds). Schalm's Veterinary Hematology, 6th ed. Wiley-Blackwell, 2010: "
    "ch. 111 (sheep and goat) and ch. 112 (camelids)",
    "Merck Veterinary Manual, Hematologic reference ranges (goat, sheep, llama/alpaca)",
)
_SMALL_MAMMAL_SRC = (
    "Quesenberry KE, Carpenter JW (eds). Ferrets, Rabbits and Rodents: Clinical Medicine and Surgery, "
    "3rd ed. Elsevier, 2012: hematology reference intervals",
    "Merck Veterinary Manual, Hematologic reference ranges (rabbit, ferret)",
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
        # Species outside the shipped models' training (the stress suite's unseen species).
        SpeciesPreset(
            "goat",
            rbc_1e6_per_ul=Interval(8.0, 18.0), mcv_fl=Interval(16, 25), rdw_cv_percent=Interval(20.0, 26.0),
            mchc_g_dl=Interval(30, 36), retic_percent=Interval(0.0, 0.1),
            plt_1e3_per_ul=Interval(300, 600), mpv_fl=Interval(4.5, 7.0),
            plt_volume_sigma=0.40, macroplatelet_fraction=0.01, sources=_SMALL_RUMINANT_SRC,
            notes="the smallest mammalian red cells: single red cells overlap large platelets in size",
        ),
        SpeciesPreset(
            "sheep",
            rbc_1e6_per_ul=Interval(9.0, 15.0), mcv_fl=Interval(28, 40), rdw_cv_percent=Interval(18.0, 24.0),
            mchc_g_dl=Interval(31, 34), retic_percent=Interval(0.0, 0.1),
            plt_1e3_per_ul=Interval(250, 750), mpv_fl=Interval(3.5, 6.0),
            plt_volume_sigma=0.40, macroplatelet_fraction=0.01, sources=_SMALL_RUMINANT_SRC,
        ),
        SpeciesPreset(
            "alpaca",
            rbc_1e6_per_ul=Interval(10.0, 17.0), mcv_fl=Interval(21, 29), rdw_cv_percent=Interval(16.0, 22.0),
            mchc_g_dl=Interval(39, 47), retic_percent=Interval(0.0, 0.5),
            plt_1e3_per_ul=Interval(200, 600), mpv_fl=Interval(5.0, 7.5),
            plt_volume_sigma=0.40, macroplatelet_fraction=0.01, rbc_elongation=2.0, sources=_SMALL_RUMINANT_SRC,
            notes="camelid red cells are flat ellipses that do not sphere: long pulses for their volume, "
            "high haemoglobin concentration",
        ),
        SpeciesPreset(
            "rabbit",
            rbc_1e6_per_ul=Interval(5.0, 8.0), mcv_fl=Interval(58, 67), rdw_cv_percent=Interval(12.0, 15.0),
            mchc_g_dl=Interval(31, 35), retic_percent=Interval(2.0, 4.0),
            plt_1e3_per_ul=Interval(250, 650), mpv_fl=Interval(4.5, 7.0),
            plt_volume_sigma=0.40, macroplatelet_fraction=0.01, sources=_SMALL_MAMMAL_SRC,
            notes="reticulocytes 2-4 % in health",
        ),
        SpeciesPreset(
            "ferret",
            rbc_1e6_per_ul=Interval(6.8, 12.2), mcv_fl=Interval(42, 52), rdw_cv_percent=Interval(13.0, 17.0),
            mchc_g_dl=Interval(30, 35), retic_percent=Interval(1.0, 12.0),
            plt_1e3_per_ul=Interval(300, 900), mpv_fl=Interval(6.0, 9.0),
            plt_volume_sigma=0.42, macroplatelet_fraction=0.02, retic_rna_factor=0.3, sources=_SMALL_MAMMAL_SRC,
            notes="many reticulocytes in health, with a weaker RNA-stain signal than human reticulocytes",
        ),
    )
}

#: Species the shipped models were trained on (export/training/shipped_models.py); the others are unseen.
TRAINED_SPECIES = ("human", "dog", "cat", "horse", "cattle")


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


def _severe_thrombocytopenia(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    # Log-uniform 5-40 x10^3/uL: the transfusion-decision range, down to the lowest counts reported.
    return replace(p, plt_per_ul=float(np.exp(rng.uniform(np.log(5e3), np.log(40e3)))),
                   mpv_fl=p.mpv_fl * rng.uniform(1.0, 1.3))


def _debris(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    # Lysed cells, old or mishandled samples, chemotherapy: 10-60 x10^3 fragments/uL of platelet size
    # (Zandecki et al. 2007, part I).
    return replace(p, lysis_debris_per_ul=rng.uniform(10e3, 60e3))


def _schistocytes(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    # Microangiopathic haemolysis: 1-6 % fragments (ICSH: > 1 % is clinically significant).
    return replace(p, schistocyte_fraction=rng.uniform(0.01, 0.06), rdw_cv=p.rdw_cv + rng.uniform(0.01, 0.04))


def _giant_platelets(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    # Inherited macrothrombocytopenias (MYH9, Bernard-Soulier): many platelets the size of red cells.
    return replace(p, plt_per_ul=p.plt_per_ul * rng.uniform(0.3, 0.8), macroplatelet_fraction=rng.uniform(0.10, 0.30),
                   macroplatelet_factor=rng.uniform(3.5, 6.0))


def _lipemia(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    # Lipid droplets scatter like cells of platelet to red-cell size (Zandecki et al. 2007).
    return replace(p, lipid_per_ul=rng.uniform(50e3, 300e3))


def _cold_agglutinins(p: SampleParameters, rng: np.random.Generator) -> SampleParameters:
    # Red cells agglutinate at room temperature: aggregates of 2 to ~10 cells fake large cells and a low RBC.
    return replace(p, rbc_aggregate_fraction=rng.uniform(0.10, 0.35), rbc_aggregate_size=rng.uniform(3.0, 5.0))


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
    "severe-thrombocytopenia": _severe_thrombocytopenia,
    "thrombocytosis": _thrombocytosis,
    "macrocytosis": _macrocytosis,
    "microcytosis": _microcytosis,
    # Interferences: what analyzers miscount (docs/simulator.md, "Interferences").
    "debris": _debris,
    "schistocytes": _schistocytes,
    "giant-platelets": _giant_platelets,
    "lipemia": _lipemia,
    "cold-agglutinins": _cold_agglutinins,
}


def pathology_names(pathology: str | None) -> list[str]:
    """The presets of a pathology string ('a+b' combines them); SimulationError for an unknown one."""
    names = [n.strip() for n in (pathology or "").split("+") if n.strip()]
    bad = [n for n in names if n not in PATHOLOGIES]
    if bad:
        raise SimulationError(f"unknown pathology {bad[0]!r} (known: {', '.join(PATHOLOGIES)}; combine with '+')")
    return names


def species_preset(name: str) -> SpeciesPreset:
    try:
        return SPECIES[name.lower()]
    except KeyError:
        raise SimulationError(f"unknown species {name!r} (the simulator's {len(SPECIES)} presets: "
                              f"{', '.join(SPECIES)})") from None


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
        retic_rna_factor=sp.retic_rna_factor,
        rbc_elongation=sp.rbc_elongation,
    )
    # Pathologies combine with '+' ("severe-thrombocytopenia+debris"), applied left to right.
    for name in pathology_names(pathology):
        p = PATHOLOGIES[name](p, rng)
    bad = [k for k in overrides if not hasattr(p, k)]
    if bad:
        raise SimulationError(f"unknown sample parameter(s): {', '.join(bad)}")
    return replace(p, **{k: v for k, v in overrides.items() if v is not None})
