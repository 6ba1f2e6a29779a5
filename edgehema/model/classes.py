"""Event classes: the shared vocabulary of the simulator's truth, the classifier and the results.

An *event* is one trigger of the optics: a single cell, several cells passing the beam together
(a *coincidence*, including biological aggregates such as platelet clumps), or noise/debris.
"""

from __future__ import annotations

import numpy as np

NOISE, RBC, RETIC, COINCIDENCE, PLT = 0, 1, 2, 3, 4
#: Class names in code order; JSON results use these keys.
EVENT_CLASSES: tuple[str, ...] = ("noise", "rbc", "retic", "coincidence", "plt")
#: Per-sample cell populations (``rbc`` counts every red cell, reticulocytes included).
CELL_POPULATIONS: tuple[str, ...] = ("rbc", "retic", "plt")


def event_counts(labels: np.ndarray) -> dict[str, int]:
    """Events per class plus ``total``, with the keys of the results' ``events`` object."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(EVENT_CLASSES))
    out = {name: int(counts[i]) for i, name in enumerate(EVENT_CLASSES)}
    out["total"] = int(counts.sum())
    return out
