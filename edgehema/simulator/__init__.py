"""Synthetic blood samples with per-event ground truth (see docs/simulator.md)."""

from edgehema.simulator.generator import InstrumentSettings, SampleSimulator, SimulatedSample
from edgehema.simulator.presets import PATHOLOGIES, SPECIES, SampleParameters, SpeciesPreset, draw_parameters, species_preset

__all__ = [
    "InstrumentSettings",
    "PATHOLOGIES",
    "SPECIES",
    "SampleParameters",
    "SampleSimulator",
    "SimulatedSample",
    "SpeciesPreset",
    "draw_parameters",
    "species_preset",
]
