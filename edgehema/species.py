"""The species a sample may be labelled with: the simulator's presets and the other mammals whose
blood veterinary hematology analyzers measure. A name outside this list is refused (a typo would
otherwise travel into every result and the laboratory's records)."""

from __future__ import annotations

from edgehema.exceptions import EdgehemaError
from edgehema.simulator.presets import SPECIES

#: Mammals with anucleate red cells that RBC/PLT/RET analyzers are used on (lower case).
MAMMALS = (
    "human", "dog", "cat", "horse", "cattle", "goat", "sheep", "pig", "rabbit", "ferret", "rat", "mouse",
    "guinea-pig", "hamster", "gerbil", "chinchilla", "llama", "alpaca", "camel", "donkey", "non-human-primate",
)


def known_species() -> tuple[str, ...]:

    return tuple(dict.fromkeys((*SPECIES, *MAMMALS)))


def check_species(name: str) -> str:
    """The species name in its canonical (lower-case) form, or one error line."""
    canonical = name.strip().lower().replace(" ", "-").replace("_", "-")
    if canonical not in known_species():
        known = known_species()
        raise EdgehemaError(f"unknown species {name!r} (the {len(known)} species a sample may be: {', '.join(known)})")
    return canonical
