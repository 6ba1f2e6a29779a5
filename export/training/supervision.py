"""From what a reference analyzer reports to the proportions the model is trained on.

A reference gives ratios within a sample: PLT:RBC and RET %, never events per class. The model's
two stages assign *events*: stage 1 noise / platelet / red-cell side, stage 2 (within the red-cell
side) normal / reticulocyte / coincidence. edgehema's counting turns events back into cells
(edgehema/counts/counting.py): a coincidence event holds about two red cells, and a platelet within the
resolving window tau of a red cell hides under its pulse. So, with the sample's Poisson occupancy:

* units pass at rate lambda (per us); recorded events at lambda_ev = lambda exp(-lambda tau), solved
  for lambda from the file's event count and acquisition time; the share of events that hold two or
  more cells is c = 1 - exp(-lambda tau), almost all on the red-cell side: c_R = c / (1 - s_P);
* hidden platelets per red-cell event h = 1 - exp(-2 lambda_P tau), lambda_P = lambda rho / (1 + rho);
* platelet events per red-cell event k = rho (1 + c_R) - h, so stage 1's target is
  plt / (plt + rbc_side) = k / (1 + k); stage 2's are retic / (rbc + retic) = RET % / 100 and
  coincidence / (red-cell side) = c_R.

Without an acquisition time (a file that does not record start and end), c_R and h are unknown:
the PLT:RBC target is then taken as it is (k = rho, which reads PLT low by about c_R, a few per cent)
and coincidences are learned without supervision, from their place in the latent space. Noise
events are in no analyzer's reference: they are learned without supervision (a weak prior keeps
their share small). Where the reference gives the file's events per class (expert gates, or the
simulator for the shipped model), every share is supervised as given. docs/training.md says the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .dataset import TrainingFile

STAGE1_CLASSES = ("noise", "plt", "rbc_side")
STAGE2_CLASSES = ("rbc", "retic", "coincidence")


@dataclass(frozen=True)
class Share:
    """sum(p[numerator]) / sum(p[denominator]) of a bag's mean assignment should be ``target``."""

    name: str
    numerator: tuple[int, ...]
    denominator: tuple[int, ...]
    target: float


@dataclass
class Targets:
    stage1: list[Share] = field(default_factory=list)
    stage2: list[Share] = field(default_factory=list)
    coincidence: str = "unsupervised"  # or "poisson"

    @property
    def supervised(self) -> bool:
        return bool(self.stage1 or self.stage2)


def unit_rate(events_per_us: float, tau_us: float) -> float:
    """lambda from lambda_ev = lambda exp(-lambda tau) (the smaller root; fixed-point iteration)."""
    lam = events_per_us
    for _ in range(100):
        nxt = events_per_us * math.exp(min(lam * tau_us, 50.0))
        if abs(nxt - lam) < 1e-12:
            break
        lam = nxt
    return lam


def targets_for(f: TrainingFile, tau_us: float | None) -> Targets:
    """The shares ``f``'s reference supervises: every share where its events were counted per class
    (expert gates, or a simulator, which knows every event), else those derived from the ratios."""
    t = Targets()
    if f.reference is not None and f.reference.event_counts is not None:
        # Floored like the derived shares: a class absent from a sample (a horse's reticulocytes)
        # would be a log ratio of minus infinity in the initial share regression.
        e = f.reference.events
        side = e["rbc"] + e["retic"] + e["coincidence"]
        for k, name in enumerate(STAGE1_CLASSES):
            n = side if name == "rbc_side" else e[name]
            t.stage1.append(Share(f"{name}/all", (k,), (0, 1, 2), max(n / max(e["total"], 1), 1e-5)))
        for k, name in enumerate(STAGE2_CLASSES):
            t.stage2.append(Share(f"{name}/side", (k,), (0, 1, 2), max(e[name] / max(side, 1), 1e-5)))
        t.coincidence = "counted"
        return t
    r = f.reference
    if r is None:
        return t
    rho = r.plt_to_rbc
    c_side = h = None
    if tau_us and f.elapsed_s:
        lam = unit_rate(f.n_events / (f.elapsed_s * 1e6), tau_us)
        c = 1.0 - math.exp(-lam * tau_us)
        if rho is not None:
            s_p = rho / (1.0 + rho)
            c_side = min(c / max(1.0 - s_p, 0.05), 0.9)
            h = 1.0 - math.exp(-2.0 * lam * s_p * tau_us)
        else:
            c_side = min(c, 0.9)
        t.coincidence = "poisson"
    if rho is not None:
        k = rho * (1.0 + (c_side or 0.0)) - (h or 0.0)
        k = max(k, 1e-5)
        t.stage1.append(Share("plt/(plt+rbc_side)", (1,), (1, 2), k / (1.0 + k)))
    if r.retic_percent is not None:
        t.stage2.append(Share("retic/(rbc+retic)", (1,), (0, 1), min(max(r.retic_percent / 100.0, 1e-5), 0.999)))
    if c_side is not None:
        t.stage2.append(Share("coincidence/side", (2,), (0, 1, 2), max(c_side, 1e-5)))
    return t
