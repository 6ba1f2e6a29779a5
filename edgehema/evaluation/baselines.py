"""Baselines that ``edgehema evaluate`` sets beside the reference model.

* ``FixedGateClassifier``: a classical analyzer. Fixed thresholds on size (axial light loss),
  fluorescence, scatter and pulse area, set once on a human control sample (as an instrument is
  calibrated at the factory) and then applied to every species.
* ``GaussianMixtureClassifier``: an unsupervised Gaussian mixture fitted on each sample's raw
  (log-scaled) features; its components are named by the *true* majority class of their events, an
  oracle mapping that flatters it, so it shows what plain clustering of the raw features can reach.
* The supervised MLP (an upper bound trained with per-event labels) is a shipped bundle run by
  :class:`~edgehema.model.classifier.Classifier` like the reference model.

Each has ``infer(events) -> EventInference`` (``GaussianMixtureClassifier`` also takes the truth
labels for its oracle mapping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgehema.model import classes as C
from edgehema.model.classifier import EventInference
from edgehema.model.clustering import DiagonalGMM
from edgehema.profiles import Profile, get_profile
from edgehema.simulator import SampleSimulator


@dataclass
class Gates:
    noise_fsc_hi_peak: float
    plt_ext_peak: float
    coincidence_ext_area: float
    coincidence_ext_width: float
    retic_fl_peak: float


class FixedGateClassifier:
    """Thresholds set on one human control sample, then fixed."""

    name = "fixed-gate"

    def __init__(self, profile: Profile | None = None, gates: Gates | None = None, seed: int = 424242):
        self.profile = profile or get_profile("optical-11")
        self.gates = gates or self.calibrate(seed)

    def calibrate(self, seed: int) -> Gates:
        """Set the gates on a simulated healthy human control, as a factory calibration would."""

        s = SampleSimulator("human", seed=seed, profile=self.profile).generate(100_000)
        ev, lab = s.sample.events, s.labels
        col = self.profile.index
        rbc = ev[lab == C.RBC]
        plt = ev[lab == C.PLT]
        return Gates(
            # Noise: no coherent high-angle scatter; halfway (geometrically) to the smallest platelets.
            noise_fsc_hi_peak=float(np.sqrt(np.percentile(plt[:, col("fsc_hi_peak")], 1) * 20.0)),
            # The PLT/RBC discriminator between the two size populations (log-midpoint).
            plt_ext_peak=float(np.sqrt(np.percentile(plt[:, col("ext_peak")], 99) * np.percentile(rbc[:, col("ext_peak")], 1))),
            coincidence_ext_area=float(1.6 * np.median(rbc[:, col("ext_area")])),
            coincidence_ext_width=float(np.percentile(rbc[:, col("ext_width")], 99.5)),
            retic_fl_peak=float(np.percentile(rbc[:, col("fl_peak")], 99.8)),
        )

    def infer(self, events: np.ndarray) -> EventInference:
        col = self.profile.index
        g = self.gates
        labels = np.full(len(events), C.RBC, dtype=np.uint8)
        big = (events[:, col("ext_area")] > g.coincidence_ext_area) | (events[:, col("ext_width")] > g.coincidence_ext_width)
        labels[events[:, col("fl_peak")] > g.retic_fl_peak] = C.RETIC
        labels[big] = C.COINCIDENCE
        labels[events[:, col("ext_peak")] < g.plt_ext_peak] = C.PLT
        labels[events[:, col("fsc_hi_peak")] < g.noise_fsc_hi_peak] = C.NOISE
        return EventInference(np.eye(len(C.EVENT_CLASSES))[labels], labels)


class GaussianMixtureClassifier:
    """Diagonal Gaussian mixture by EM on log features, per sample; components named by truth."""

    name = "gmm-raw"

    def __init__(self, components: int = 10, fit_events: int = 20_000, iterations: int = 60, seed: int = 0):
        self.components = components
        self.fit_events = fit_events
        self.iterations = iterations
        self.seed = seed

    def infer(self, events: np.ndarray, truth_labels: np.ndarray) -> EventInference:
        rng = np.random.default_rng(self.seed)
        x = np.log1p(np.maximum(events, 0.0)).astype(np.float64)
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
        fit = x[rng.choice(len(x), size=min(self.fit_events, len(x)), replace=False)]
        k = self.components
        means = fit[rng.choice(len(fit), size=k, replace=False)]
        gmm = DiagonalGMM(np.full(k, 1.0 / k), means, np.ones((k, x.shape[1])))
        for _ in range(self.iterations):  # plain maximum-likelihood EM
            r = gmm.responsibilities(fit)
            nk = r.sum(0) + 1e-9
            mu = (r.T @ fit) / nk[:, None]
            var = np.maximum((r.T @ (fit * fit)) / nk[:, None] - mu * mu, 1e-4)
            gmm = DiagonalGMM(nk / nk.sum(), mu, var)
        comp = gmm.responsibilities(x).argmax(1)
        # Oracle naming: each component takes the true class most of its events have.
        table = np.zeros((k, len(C.EVENT_CLASSES)), dtype=np.int64)
        np.add.at(table, (comp, truth_labels.astype(np.int64)), 1)
        names = table.argmax(1).astype(np.uint8)
        labels = names[comp]
        return EventInference(np.eye(len(C.EVENT_CLASSES))[labels], labels)
