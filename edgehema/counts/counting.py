"""From per-event classes to a sample's counts: events, cells, retic %, concentrations, flags.

Cells differ from events in two ways, and both are corrected here:

* A *coincidence* event holds two or more cells. Pulse areas add up, so its cell content is
  estimated by decomposing its area features into red-cell and platelet signatures taken from the
  sample's own single events (least squares, rounded; at least two cells). A coincidence whose
  areas show one red cell is a red cell plus a platelet too small to see.
* A platelet that passes within the resolving window of a red cell hides completely under the red
  cell's pulse (about 5 % of its area, nothing above half maximum), so those events look like single
  red cells. With the instrument's resolving window tau (profile) and the measured platelet rate
  lambda_P, the expected number hidden is N_redcell_events x (1 - exp(-2 lambda_P tau)) (Poisson).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgehema.model import classes as C
from edgehema.model.bundle import Limits
from edgehema.counts import plausibility
from edgehema.profiles import Profile
from edgehema.sample import SampleInfo

#: Quality-control limits behind the flags (docs/classifier.md).
MIN_EVENTS = 10_000
MAX_COINCIDENCE_FRACTION = 0.08
MAX_OOD_FRACTION = 0.01
MAX_AMBIGUOUS_FRACTION = 0.05
AMBIGUOUS_PROBABILITY = 0.8
CLUMP_SHARE_OF_PLT = 0.03
#: No coincidence is read as more cells than this (clumps larger than this are rare and flagged).
MAX_CELLS_PER_EVENT = 15
#: A platelet-like coincidence with a pulse this much longer than a platelet's is a clump.
CLUMP_WIDTH_RATIO = 1.25
#: Platelet events below this share of red-cell events: severe thrombocytopenia, clumps and
#: platelets riding along with a red cell are rare.
SCARCE_PLATELETS = 0.02

FLAG_TEXT = {
    "too_few_events": "fewer than {limit:,} events: counts are statistically weak",
    "high_coincidence": "coincidence events {value:.1%} of events (limit {limit:.0%}): dilute the sample further and rerun",
    "platelet_clumps_suspected": "platelets in clumps {value:.1%} of platelets (limit {limit:.0%}): PLT count may be low; check the smear",
    "out_of_distribution": "{value:.2%} of events unlike the training data (limit {limit:.0%}): check instrument and model",
    "ambiguous_assignments": "{value:.1%} of events assigned with probability < {p:.1f} (limit {limit:.0%})",
    "incomplete": "the sample did not end normally: counts cover only the events received",
}


def widened(fixed: float, fitted: float | None) -> float:
    """A limit a bundle fitted on its training samples widens the fixed one, never narrows it: an
    instrument that dilutes less or reads more platelets in clumps on plain samples moves the fence
    out, and a fence inside the fixed limit has no evidence that the samples between are wrong."""
    return max(fixed, fitted) if fitted is not None else fixed


@dataclass
class Counts:
    events: dict[str, int]
    cells: dict[str, float]
    retic_percent: float | None
    concentration: dict[str, float | None]
    flags: list[str] = field(default_factory=list)
    flag_details: dict[str, str] = field(default_factory=dict)
    qc: dict[str, float] = field(default_factory=dict)
    #: Why there are no concentrations (None when there are).
    concentration_note: str | None = None


def concentration_note(dilution: float | None, volume_ul: float | None) -> str | None:
    """Why concentrations cannot be given: per uL of blood needs the dilution and the volume analysed."""
    if dilution and volume_ul:
        return None
    missing = [what for what, v in (("the dilution (--dilution)", dilution),
                                    ("the analysed volume (--volume-ul)", volume_ul)) if not v]
    return f"no concentrations: {' and '.join(missing)} not given, nor in the file's metadata"


def coincidence_cells(
    events: np.ndarray, labels: np.ndarray, profile: Profile, area_features: list[str],
    width_feature: str | None = "ext_width",
) -> tuple[np.ndarray, np.ndarray]:
    """(red cells, platelets) in each coincidence event, from its pulse areas.

    The first area feature (axial light loss area for optical-11) measures size most cleanly:
    a doublet of red cells reads 1.8-2.3 single-cell areas, a triplet 2.8-3.4. A coincidence whose
    side-scatter/extinction ratio is nearer the platelets' than the red cells' is a platelet clump,
    counted in platelet areas. Coincidences that read as one cell are counted as one red cell: the
    platelet that may ride along is counted statistically (see ``count_sample``), not guessed.
    """
    # The columns are strided views of the event table: each is gathered once, by index.
    counts = np.bincount(np.asarray(labels, dtype=np.intp), minlength=len(C.EVENT_CLASSES))
    coinc_i = np.flatnonzero(labels == C.COINCIDENCE)
    n = len(coinc_i)
    n_rbc = np.zeros(n, dtype=np.int64)
    n_plt = np.zeros(n, dtype=np.int64)
    if n == 0:
        return n_rbc, n_plt
    names = {x.lower(): i for i, x in enumerate(profile.feature_names)}
    cols = [names[f.lower()] for f in area_features if f.lower() in names]
    n_red, n_plt_events = int(counts[C.RBC] + counts[C.RETIC]), int(counts[C.PLT])
    if not cols or n_red < 50:
        return np.full(n, 2, dtype=np.int64), n_plt  # no areas to read: the minimum, two red cells
    red = (labels == C.RBC) | (labels == C.RETIC)
    area = events[:, cols[0]]
    area_c = area[coinc_i]
    # Population medians from evenly spaced subsets (indices), so the work does not grow with the sample.
    red_i, plt_i = _spaced(red), _spaced(labels == C.PLT)
    area_red, area_plt = area[red_i], area[plt_i]
    a_red = max(float(_median(area_red)), 1e-6)
    n_rbc = np.clip(np.rint(area_c / a_red), 1, MAX_CELLS_PER_EVENT).astype(np.int64)
    if len(cols) >= 2 and n_plt_events >= 50:
        second = events[:, cols[1]]
        r_red = _median(second[red_i] / np.maximum(area_red, 1e-6))
        r_plt = _median(second[plt_i] / np.maximum(area_plt, 1e-6))
        if r_plt > 1.5 * r_red:  # only where the signatures differ
            cut = np.sqrt(r_red * r_plt)
            a_plt = max(float(_median(area_plt)), 1e-6)
            in_plt = area_c / a_plt
            # Platelet-like: a platelet signature and the area of a few platelets, not of red cells.
            plt_like = (second[coinc_i] / np.maximum(area_c, 1e-6) > cut) & (in_plt <= MAX_CELLS_PER_EVENT)
            # A red-cell-sized event read as many small platelets (human platelets are ~1/18 of a red cell,
            # so 0.8 red cells would be a 14-platelet clump) is far likelier red cells with a platelet
            # riding along (its side scatter gives the platelet signature) or, where platelets are scarce,
            # one young, less dense red cell: big clumps are rare. Measured on held-out samples of
            # another instrument (docs/accuracy.md): 2 of 114 such events were clumps, the rest held
            # red cells and 0-2 platelets, each read as about 13 platelets and no red cell.
            red_sized = plt_like & (area_c > 0.6 * a_red) & (in_plt > 6)
            plt_like &= ~red_sized
            n_rbc[plt_like] = 0
            n_plt[plt_like] = 1
            if n_plt_events >= SCARCE_PLATELETS * n_red:
                n_plt[red_sized] = 1
            # A clump is several platelets in a row, so its pulse is longer than a platelet's; a
            # giant platelet has a platelet's pulse length and counts as one.
            if width_feature is not None and width_feature.lower() in names:
                width = events[:, names[width_feature.lower()]]
                long_pulse = width[coinc_i] > CLUMP_WIDTH_RATIO * float(_median(width[plt_i]))
                clump = plt_like & long_pulse
                n_plt[clump] = np.clip(np.rint(in_plt[clump]), 2, MAX_CELLS_PER_EVENT)
    return n_rbc, n_plt


def _spaced(mask: np.ndarray, at_most: int = 40_000) -> np.ndarray:
    """Indices of an evenly spaced subset of at most about ``at_most`` of the events in ``mask``: the
    standard error of a median of 40,000 values is a fraction of a per cent, and it keeps the
    end-of-sample work of the live stream short."""
    idx = np.flatnonzero(mask)
    return idx[:: max(1, len(idx) // at_most)]


def _median(values: np.ndarray) -> float:
    return float(np.median(values))


def count_sample(
    events: np.ndarray,
    probabilities: np.ndarray,
    labels: np.ndarray,
    profile: Profile,
    info: SampleInfo,
    area_features: list[str],
    recon_err: np.ndarray | None = None,
    recon_threshold: float | None = None,
    coincidence_window_us: float | None = None,
    elapsed_s: float | None = None,
    complete: bool = True,
    adaptation: dict | None = None,
    limits: Limits | None = None,
) -> Counts:
    """A sample's counts in four steps: coincidences decomposed and unstained platelet-sized events
    excluded, cells counted, quality figures, flags. ``limits``: the bundle's own limits of the
    checks (None or a field None: the runtime's fixed ones)."""
    assigned = labels
    # Coincidences are read against the populations as the model assigned them.
    n_rbc_c, n_plt_c = coincidence_cells(events, assigned, profile, area_features)
    reading = _exclude_unstained(events, assigned, profile, n_plt_c)
    ev = C.event_counts(reading.labels)
    cells, hidden_plt, debris_stained = _cells(events, assigned, profile, ev, n_rbc_c, reading, coincidence_window_us,
                                               elapsed_s)
    retic_percent = 100.0 * cells["retic"] / cells["rbc"] if cells["rbc"] else None
    conc: dict[str, float | None] = {"rbc_per_uL": None, "plt_per_uL": None, "retic_per_uL": None}
    if info.dilution and info.volume_ul:
        k = info.dilution / info.volume_ul
        conc = {"rbc_per_uL": cells["rbc"] * k, "plt_per_uL": cells["plt"] * k, "retic_per_uL": cells["retic"] * k}
    qc = _quality(probabilities, assigned, ev, cells, reading, hidden_plt, debris_stained, recon_err, recon_threshold)
    flags = _flags(events, assigned, probabilities, profile, qc, adaptation, elapsed_s, reading, limits or Limits(),
                   complete)
    return Counts(ev, cells, retic_percent, conc, list(flags), flags, qc,
                  concentration_note(info.dilution, info.volume_ul))


@dataclass
class _Reading:
    """The classes counted: the model's, with platelet-sized events that took no platelet stain
    (debris, lipid) taken out of the platelets and out of the coincidences read as platelet clumps."""

    labels: np.ndarray
    n_plt_c: np.ndarray  # platelets in each coincidence event
    platelet_read: np.ndarray  # events the model read as platelets (the class, or clumps)
    unstained: np.ndarray | None
    unstained_clumps: int


def _exclude_unstained(events: np.ndarray, assigned: np.ndarray, profile: Profile, n_plt_c: np.ndarray) -> _Reading:
    coinc_idx = np.flatnonzero(assigned == C.COINCIDENCE)
    platelet_read = assigned == C.PLT
    platelet_read[coinc_idx[n_plt_c > 0]] = True
    # Events read as platelets (the platelet class, coincidences read as platelet clumps) without
    # platelet stain are debris or lipid, not platelets (plausibility).
    unstained = plausibility.unstained_platelet_events(events, assigned, profile, platelet_read)
    labels, unstained_clumps = assigned, 0
    if unstained is not None and unstained.any():
        labels = assigned.copy()
        labels[unstained & (assigned == C.PLT)] = C.NOISE
        in_coinc = unstained[coinc_idx]
        unstained_clumps = int(in_coinc.sum())
        if unstained_clumps:
            n_plt_c = n_plt_c.copy()
            n_plt_c[in_coinc] = 0  # neither platelets nor red cells: counted as nothing
    return _Reading(labels, n_plt_c, platelet_read, unstained, unstained_clumps)


def _cells(events, assigned, profile, ev, n_rbc_c, reading: _Reading, coincidence_window_us, elapsed_s):
    """Cells (coincidences contribute theirs; platelets hidden in red-cell passages by Poisson
    occupancy; stained debris subtracted): (cells, hidden platelets, stained debris)."""
    n_plt_c = reading.n_plt_c
    single_red = ev["rbc"] + ev["retic"]
    retic_share = ev["retic"] / single_red if single_red else 0.0
    debris_stained = plausibility.stained_debris(events, assigned, profile, reading.unstained)
    plt_visible = max(ev["plt"] - debris_stained, 0.0) + float(n_plt_c.sum())
    hidden_plt = 0.0
    if coincidence_window_us and elapsed_s and elapsed_s > 0:
        rate_plt_per_us = plt_visible / (elapsed_s * 1e6)
        red_events = single_red + ev["coincidence"] - int((n_plt_c > 0).sum()) - reading.unstained_clumps
        hidden_plt = red_events * (1.0 - np.exp(-2.0 * rate_plt_per_us * coincidence_window_us))
    cells = {
        "rbc": float(single_red + n_rbc_c.sum()),
        "retic": float(ev["retic"] + retic_share * n_rbc_c.sum()),
        "plt": float(plt_visible + hidden_plt),
    }
    return cells, hidden_plt, debris_stained


def _quality(probabilities, assigned, ev, cells, reading: _Reading, hidden_plt, debris_stained, recon_err,
             recon_threshold) -> dict:
    n = len(assigned)
    n_plt_c, unstained = reading.n_plt_c, reading.unstained
    qc = {
        "coincidence_fraction": ev["coincidence"] / n if n else 0.0,
        # The top probability is the one of the assigned class (a gather, not a row-wise max).
        "ambiguous_fraction": float(np.mean(probabilities[np.arange(n), assigned] < AMBIGUOUS_PROBABILITY)) if n else 0.0,
        "hidden_platelets": round(hidden_plt, 1),
        "platelets_in_coincidences": int(n_plt_c.sum()),
        "plt_unstained_excluded": int(unstained.sum()) - reading.unstained_clumps if unstained is not None else 0,
        "plt_unstained_clumps_excluded": reading.unstained_clumps,
        "plt_stained_debris_subtracted": round(debris_stained, 1),
    }
    clumped = float(n_plt_c[n_plt_c >= 2].sum())
    qc["platelet_clump_share"] = clumped / cells["plt"] if cells["plt"] else 0.0
    if recon_err is not None and recon_threshold:
        qc["ood_fraction"] = float(np.mean(recon_err > recon_threshold)) if n else 0.0
    return qc


def _flags(events, assigned, probabilities, profile, qc, adaptation, elapsed_s, reading: _Reading, limits: Limits,
           complete) -> dict[str, str]:
    n = len(assigned)
    flags: dict[str, str] = {}

    def flag(code: str, value: float, limit: float) -> None:
        flags[code] = FLAG_TEXT[code].format(value=value, limit=limit, p=AMBIGUOUS_PROBABILITY)

    if n < MIN_EVENTS:
        flag("too_few_events", n, MIN_EVENTS)
    # The checks see the classes as the model assigned them, before the exclusion.
    checks = plausibility.check(events, assigned, probabilities, profile, qc, adaptation, elapsed_s, reading.unstained,
                                limits.stage2_shift_max, reading.platelet_read, limits.rbc_stain_skew_max,
                                limits.plt_unstained_share_max, limits.plt_unstained_per_rbc_max)
    # Diluting helps only when the coincidences are what the concentration predicts.
    coincidence_limit = widened(MAX_COINCIDENCE_FRACTION, limits.coincidence_fraction_max)
    if qc["coincidence_fraction"] > coincidence_limit and "coincidence_implausible" not in checks:
        flag("high_coincidence", qc["coincidence_fraction"], coincidence_limit)
    clump_limit = widened(CLUMP_SHARE_OF_PLT, limits.plt_clump_share_max)
    if qc["platelet_clump_share"] > clump_limit:
        flag("platelet_clumps_suspected", qc["platelet_clump_share"], clump_limit)
    if qc.get("ood_fraction", 0.0) > MAX_OOD_FRACTION:
        flag("out_of_distribution", qc["ood_fraction"], MAX_OOD_FRACTION)
    if qc["ambiguous_fraction"] > MAX_AMBIGUOUS_FRACTION:
        flag("ambiguous_assignments", qc["ambiguous_fraction"], MAX_AMBIGUOUS_FRACTION)
    flags.update(checks)
    if not complete:
        flags["incomplete"] = FLAG_TEXT["incomplete"]
    return flags
