"""Sample-level plausibility: is this sample like the ones the model can count?

Per-event reconstruction error misses whole populations that sit where trained ones sat (a goat's
red cells where platelets and coincidences were) and interferences that look like cells. The
checks here look at the sample as a whole, each against physics or the trained range, and each
raises a named flag whose text says what is suspected and what to do (docs/accuracy.md):

* **Coincidence against Poisson occupancy.** With the event rate (events over acquisition time)
  and the resolving window, chance coincidences are ``1 - exp(-lambda tau)`` of events. Far more
  than that is not a concentration problem (diluting does not help) but cells stuck together
  (agglutination, clumps) or single cells the model mistakes for coincidences.
* **Population positions after adaptation.** Adaptation moves the trained clusters to the
  sample; a move beyond what the training instruments and species needed means the population
  was not recognised.
* **Platelet stain uptake.** Platelets take up the nucleic-acid stain; debris and lipid droplets of
  platelet size mostly do not. Platelet-class events darker than half the red cells' median
  (gain-free: both in one channel) are not counted as platelets, and their share flags the
  interference: low side scatter for their size (debris, fragments), high (lipid).
  Stained debris (nuclear fragments) is estimated from where the unstained debris scatters
  (:func:`stained_debris`) and subtracted from the platelet count.
* **Reticulocyte signal.** The stain signal of cells called mature red cells is log-normal; a
  long upper tail is reticulocytes whose signal is unlike the trained ones (RET low).

The limits were set on the stress suite's calibration seeds (``edgehema evaluate --suite stress
--seed 1``) and are judged on other seeds (docs/accuracy.md).
"""

from __future__ import annotations

import math

import numpy as np

from edgehema.model import classes as C
from edgehema.profiles import Profile

#: Coincidences beyond Poisson: more than this many times the expected fraction plus this margin.
COINCIDENCE_EXCESS_FACTOR = 2.0
COINCIDENCE_EXCESS_MARGIN = 0.03
#: Adaptation move of the red-cell components (latent units) beyond the trained species and
#: instruments' range. (The stage-1 noise centroid moves ~2 on every sample, so stage 1 says nothing.)
#: A latent space is the model's own: a bundle carries its limit (``thresholds.stage2_shift_max``,
#: measured on its training samples by edgehema train); this is for bundles made before that.
MAX_STAGE2_SHIFT = 2.0
#: A platelet-class event is unstained below this fraction of the red cells' median stain signal.
UNSTAINED_RATIO = 0.5
#: The share of them that raises the debris or lipid flag. An instrument's own platelet stain and
#: trigger set how many platelet-sized events take no stain in a plain sample, so a trained bundle
#: carries its own (``thresholds.plt_unstained_share_max``, Tukey's fence over its training samples);
#: this is for bundles made before. (The debris subtraction of the count keeps this fixed share.)
MAX_UNSTAINED_SHARE = 0.05
#: Stained debris is estimated from at least this many events, where the unstained events scatter
#: at least this much (log units) less for their size than the stained ones.
MIN_DEBRIS_EVENTS = 20
DEBRIS_SCATTER_GAP = 0.3
#: Asymmetry of the mature red cells' stain signal, (p97.5 - p50) - (p50 - p2.5) in log units: dim
#: reticulocytes the model calls mature push it up. Like the population limit, it is the model's own:
#: a bundle carries it (``thresholds.rbc_stain_skew_max``, Tukey's fence over its training samples);
#: this is the limit for bundles made before (model 1.0.0's trained species stayed below 0.037).
MAX_STAIN_SKEW = 0.045

FLAG_TEXT = {
    "population_not_recognised": "population not recognised ({why}): species or instrument outside the model's "
    "training; counts unreliable, review the smear or count by a validated method",
    "coincidence_implausible": "coincidence events {value:.1%} where Poisson occupancy at this event rate allows "
    "{expected:.1%}: cells stuck together (agglutination: warm to 37 C and rerun) or single cells not recognised; "
    "diluting will not help, review the smear",
    "plt_interference_debris": "PLT abnormal distribution: {value:.1%} of platelet-sized events carry no platelet "
    "stain and little side scatter (cell debris or fragments; excluded from PLT, which may still be high): "
    "review the smear or count PLT by a reference method",
    "plt_interference_lipid": "interference suspected (lipemia): {value:.1%} of platelet-sized events scatter "
    "strongly but carry no stain (lipid droplets; excluded from PLT, which may still be high): "
    "review the sample, count PLT by a reference method",
    "retic_abnormal_distribution": "RET abnormal distribution: the mature red cells' stain signal has a long upper "
    "tail (asymmetry {value:.3f}): reticulocytes with a signal unlike the trained ones, RET may be low; "
    "count RET by a reference method",
}


#: The data checks an adaptation is judged by, most severe first: those that say the red-cell or
#: platelet count is wrong (physics: coincidences against Poisson occupancy; platelet stain uptake),
#: then the one that says only RET may be (the stain signal's tail). ``population_not_recognised``
#: is not among them: it measures the adaptation itself.
COUNT_CHECKS = ("coincidence_implausible", "plt_interference_debris", "plt_interference_lipid")
RETIC_CHECKS = ("retic_abnormal_distribution",)

ADAPTATION_REJECTED = ("per-sample adaptation rejected: adapted, the sample fails {failed}, which the trained "
                       "populations pass; the unadapted assignment is reported (adaptation would have moved the "
                       "red-cell components {shift:.2f}): the sample is unlike the model's training, review by a "
                       "validated method")


def severity(flags) -> tuple[int, int]:
    """How implausible a sample is by the model's own data checks: (count checks failed, RET checks
    failed), compared in that order (a wrong RBC or PLT count outweighs a doubtful RET)."""
    return sum(f in flags for f in COUNT_CHECKS), sum(f in flags for f in RETIC_CHECKS)


def _cols(profile: Profile, *names: str) -> list[int] | None:
    idx = {n.lower(): i for i, n in enumerate(profile.feature_names)}
    out = [idx.get(n) for n in names]
    return None if any(i is None for i in out) else out  # type: ignore[return-value]


def expected_coincidence(n_events: int, elapsed_s: float | None, window_us: float | None) -> float | None:
    """Share of events holding two or more units by chance (Poisson occupancy), or None if unknown."""
    if not elapsed_s or not window_us or n_events <= 0:
        return None
    rate_events = n_events / (elapsed_s * 1e6)
    # Units arrive at lambda, events are recorded at lambda exp(-lambda tau): solve for lambda.
    lam = rate_events
    for _ in range(30):
        lam = rate_events * math.exp(min(lam * window_us, 50.0))
        if lam * window_us > 5.0:
            return None  # beyond the occupancy the counter can resolve; the rate says nothing
    return 1.0 - math.exp(-lam * window_us)


def unstained_platelet_events(events: np.ndarray, labels: np.ndarray, profile: Profile,
                              platelet_read: np.ndarray | None = None) -> np.ndarray | None:
    """Mask of events read as platelets without platelet stain (None: the profile has no stain
    channel). ``platelet_read`` (default: the platelet class) may add the coincidence events read as
    platelet clumps: a lipid droplet or a debris aggregate the model calls a coincidence is no more
    a platelet clump than a single one is a platelet."""
    cols = _cols(profile, "fl_peak")
    if cols is None:
        return None
    red = labels == C.RBC
    plt = labels == C.PLT if platelet_read is None else platelet_read
    if red.sum() < 100 or not plt.any():
        return None
    fl = events[:, cols[0]]
    red_fl = float(np.median(fl[np.flatnonzero(red)[:: max(1, int(red.sum()) // 20_000)]]))
    return plt & (fl < UNSTAINED_RATIO * red_fl)


def stained_debris(events: np.ndarray, labels: np.ndarray, profile: Profile, unstained: np.ndarray | None) -> float:
    """Expected debris among the *stained* platelet-class events (0 where no debris is seen).

    Nuclear fragments take up the stain, so the stain alone leaves them among the platelets. Debris
    scatters less for its size than platelets (no granules, less dense), and whether a fragment takes
    up the stain does not change how it scatters: the unstained debris shows where all debris sits.
    Stained events scattering less than the unstained debris' median are then half the stained
    debris (platelets hardly ever scatter that little), so twice their number is subtracted.
    """
    if unstained is None:
        return 0.0
    cols = _cols(profile, "ssc_peak", "ext_peak")
    plt = labels == C.PLT
    n_plt, n_un = int(plt.sum()), int(unstained.sum())
    if cols is None or n_un < MIN_DEBRIS_EVENTS or n_un <= MAX_UNSTAINED_SHARE * n_plt:
        return 0.0
    gran = np.log(np.maximum(events[:, cols[0]], 1.0)) - np.log(np.maximum(events[:, cols[1]], 1.0))
    stained = plt & ~unstained
    if stained.sum() < MIN_DEBRIS_EVENTS:
        return 0.0
    debris_mid = float(np.median(gran[unstained]))
    if debris_mid > float(np.median(gran[stained])) - DEBRIS_SCATTER_GAP:
        return 0.0  # unstained events scatter like platelets or more: lipid, not debris
    return 2.0 * float(np.sum(stained & (gran < debris_mid)))


def check(
    events: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    profile: Profile,
    qc: dict,
    adaptation: dict | None,
    elapsed_s: float | None,
    unstained: np.ndarray | None,
    max_stage2_shift: float | None = None,
    platelet_read: np.ndarray | None = None,
    max_stain_skew: float | None = None,
    max_unstained_share: float | None = None,
    max_unstained_per_rbc: float | None = None,
) -> dict[str, str]:
    """Named flags (code -> text) of the sample-level checks; adds their figures to ``qc``."""
    flags: dict[str, str] = {}
    n = len(labels)
    if n == 0:
        return flags
    # Coincidences against Poisson occupancy.
    expected = expected_coincidence(n, elapsed_s, profile.coincidence_window_us)
    if expected is not None:
        qc["coincidence_expected"] = round(expected, 6)
        observed = qc.get("coincidence_fraction", 0.0)
        if observed > COINCIDENCE_EXCESS_FACTOR * expected + COINCIDENCE_EXCESS_MARGIN:
            flags["coincidence_implausible"] = FLAG_TEXT["coincidence_implausible"].format(value=observed, expected=expected)
    # Populations after adaptation.
    why = []
    if adaptation and adaptation.get("adapted"):
        s1, s2 = adaptation.get("stage1_centroid_shift", 0.0), adaptation.get("stage2_mean_shift", 0.0)
        qc["stage1_shift"], qc["stage2_shift"] = round(s1, 4), round(s2, 4)
        limit = max_stage2_shift or MAX_STAGE2_SHIFT
        if s2 > limit:
            why.append(f"red-cell components moved {s2:.2f} (limit {limit:.2f})")
    if why:
        flags["population_not_recognised"] = FLAG_TEXT["population_not_recognised"].format(why="; ".join(why))
    plt = labels == C.PLT if platelet_read is None else platelet_read
    n_plt = int(plt.sum())
    # Platelet stain uptake: debris and lipid (of every event read as platelets).
    if unstained is not None and n_plt:
        share = float(unstained.sum()) / n_plt
        qc["plt_unstained_share"] = round(share, 6)
        background = float(unstained.sum()) / max(int((labels == C.RBC).sum()), 1)
        qc["plt_unstained_per_rbc"] = round(background, 6)
        cols = _cols(profile, "ssc_peak", "ext_peak")
        if share > (max_unstained_share or MAX_UNSTAINED_SHARE):
            code = "plt_interference_debris"
            if cols is not None:
                stained = plt & ~unstained
                gran = np.log(np.maximum(events[:, cols[0]], 1.0)) - np.log(np.maximum(events[:, cols[1]], 1.0))
                ref = float(np.median(gran[stained])) if stained.sum() >= 50 else 0.0
                # Lipid droplets scatter more for their size than platelets; debris less.
                if float(np.median(gran[unstained])) > ref:
                    code = "plt_interference_lipid"
            # Where platelets are few, an instrument's own background of strongly scattering unstained
            # events (electronic noise, diluent particles) is a large share of them: lipid is flagged
            # only above that background per red-cell event as well, where the bundle knows it (fitted
            # on its training samples). Debris is not: stained fragments come with it and bias a low
            # PLT count (docs/training.md, 2026-12-08).
            if code == "plt_interference_debris" or max_unstained_per_rbc is None or background > max_unstained_per_rbc:
                flags[code] = FLAG_TEXT[code].format(value=share)
    # Reticulocyte signal: mature red cells' stain is log-normal (symmetric in log); reticulocytes
    # the model calls mature make its upper tail longer than its lower one.
    skew = stain_skew(events, labels, profile)
    if skew is not None:
        qc["rbc_stain_skew"] = round(skew, 4)
        if skew > (max_stain_skew or MAX_STAIN_SKEW):
            flags["retic_abnormal_distribution"] = FLAG_TEXT["retic_abnormal_distribution"].format(value=skew)
    return flags


def stain_skew(events: np.ndarray, labels: np.ndarray, profile: Profile) -> float | None:
    """Asymmetry of the mature red cells' log stain signal, (p97.5 - p50) - (p50 - p2.5); None where
    the profile has no stain channel or the sample too few red cells."""
    cols = _cols(profile, "fl_peak")
    red = labels == C.RBC
    if cols is None or red.sum() < 1000:
        return None
    red_i = np.flatnonzero(red)[:: max(1, int(red.sum()) // 50_000)]
    lo, mid, hi = np.percentile(np.log(np.maximum(events[red_i, cols[0]], 1.0)), [2.5, 50.0, 97.5])
    return float((hi - mid) - (mid - lo))
