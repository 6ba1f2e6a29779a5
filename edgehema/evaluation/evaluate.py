"""``edgehema evaluate``: the reference model against truth and baselines, side by side.

For each species, fresh simulated samples (seeds far from any used in training) are classified
by every method; each method's per-event labels go through the same counting
(:func:`edgehema.counts.counting.count_sample`), so the table compares classification, not bookkeeping.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

from edgehema.model import classes as C
from edgehema.batch import single_threaded_workers
from edgehema.evaluation.baselines import FixedGateClassifier, GaussianMixtureClassifier
from edgehema.model.bundle import DEFAULT_BUNDLE, REFERENCE_BUNDLE, Bundle
from edgehema.model.classifier import Classifier
from edgehema.counts.counting import count_sample
from edgehema.counts.result import DEFAULT_AREA_FEATURES, elapsed_seconds
from edgehema.simulator import InstrumentSettings, SampleSimulator

#: ``default`` is the model the device runs by default (int8, on its own engine); ``reference`` the
#: float model it was exported from (or ``--model``).
METHODS = ("default", "reference", "reference-no-adapt", "fixed-gate", "gmm-raw", "supervised-mlp")
#: Seeds for evaluation samples start here: the training recipe uses seeds below 10^8.
EVAL_SEED_BASE = 900_000_000


@dataclass(frozen=True)
class EvalConfig:
    species: tuple[str, ...] = ("human", "dog", "cat", "horse", "cattle")
    samples: int = 20
    events: int = 150_000
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    pathology: str | None = None
    gain: float = 1.0
    gain_drift: float = 0.0
    model: str | None = None
    supervised_model: str | None = "supervised-mlp"


@dataclass
class SampleScore:
    species: str
    method: str
    f1: list[float]  # per class, nan where the class is absent in truth and prediction
    recall: list[float]
    rbc_err_pct: float
    plt_err_pct: float
    retic_err_pt: float
    rbc_fraction_true: float
    rbc_fraction_pred: float


@dataclass
class MethodSummary:
    species: str
    method: str
    n: int
    macro_f1: float
    recall: dict[str, float]
    rbc_err: tuple[float, float]  # mean |%|, p95 |%|
    plt_err: tuple[float, float]
    retic_err: tuple[float, float]  # mean |points|, p95 |points|
    r2_rbc_fraction: float
    extra: dict = field(default_factory=dict)


def _scores(species, method, truth_labels, inf, sample, truth, profile) -> SampleScore:
    pred = inf.labels
    f1, rec = [], []
    for c in range(len(C.EVENT_CLASSES)):
        tp = int(np.sum((pred == c) & (truth_labels == c)))
        fp = int(np.sum((pred == c) & (truth_labels != c)))
        fn = int(np.sum((pred != c) & (truth_labels == c)))
        f1.append(math.nan if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        rec.append(math.nan if tp + fn == 0 else tp / (tp + fn))
    counts = count_sample(
        sample.events, inf.probabilities, pred, profile, sample.info, DEFAULT_AREA_FEATURES,
        coincidence_window_us=profile.coincidence_window_us, elapsed_s=elapsed_seconds(sample),
    )
    t = truth["cells"]
    c = counts.cells
    return SampleScore(
        species, method, f1, rec,
        100.0 * (c["rbc"] - t["rbc"]) / t["rbc"],
        100.0 * (c["plt"] - t["plt"]) / t["plt"] if t["plt"] else math.nan,
        (counts.retic_percent or 0.0) - truth["retic_percent"],
        t["rbc"] / (t["rbc"] + t["plt"]),
        c["rbc"] / max(c["rbc"] + c["plt"], 1e-9),
    )


_state: dict = {}


def _init(cfg: EvalConfig) -> None:
    _state["cfg"] = cfg
    methods = {}
    if "reference" in cfg.methods or "reference-no-adapt" in cfg.methods:
        bundle = Bundle.load(cfg.model or REFERENCE_BUNDLE)
        methods["reference"] = Classifier(bundle, adapt=True, threads=1)
        methods["reference-no-adapt"] = Classifier(bundle, adapt=False, threads=1)
    if "default" in cfg.methods:
        methods["default"] = Classifier(DEFAULT_BUNDLE, adapt=True, threads=1)
    if "fixed-gate" in cfg.methods:
        methods["fixed-gate"] = FixedGateClassifier()
    if "gmm-raw" in cfg.methods:
        methods["gmm-raw"] = GaussianMixtureClassifier()
    if "supervised-mlp" in cfg.methods and cfg.supervised_model:
        methods["supervised-mlp"] = Classifier(cfg.supervised_model, threads=1)
    _state["methods"] = {k: v for k, v in methods.items() if k in cfg.methods}


def _evaluate_one(task: tuple[str, int]) -> list[SampleScore]:
    species, k = task
    cfg: EvalConfig = _state["cfg"]
    ins = InstrumentSettings(gain=cfg.gain, gain_drift=cfg.gain_drift)
    seed = EVAL_SEED_BASE + cfg.seed * 10_000 + 1_000 * cfg.species.index(species) + k
    sim = SampleSimulator(species, cfg.pathology, ins, seed=seed).generate(cfg.events)
    out = []
    for name, method in _state["methods"].items():
        if isinstance(method, GaussianMixtureClassifier):
            inf = method.infer(sim.sample.events, sim.labels)
        else:
            inf = method.infer(sim.sample.events)
        out.append(_scores(species, name, sim.labels, inf, sim.sample, sim.truth, sim.sample.profile))
    return out


def r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan


def summarize(scores: list[SampleScore]) -> list[MethodSummary]:
    out = []
    keys = sorted({(s.species, s.method) for s in scores}, key=lambda k: (k[0], METHODS.index(k[1])))
    for species, method in keys:
        rows = [s for s in scores if s.species == species and s.method == method]
        f1 = np.array([r.f1 for r in rows], dtype=np.float64)
        rec = np.array([r.recall for r in rows], dtype=np.float64)
        # Macro-F1 over the classes present in a sample (nan-mean), then the mean over samples.
        macro = float(np.nanmean(np.nanmean(f1, axis=1)))
        err = lambda key: np.abs(np.array([getattr(r, key) for r in rows], dtype=np.float64))  # noqa: E731
        stats = lambda a: (float(np.nanmean(a)), float(np.nanpercentile(a, 95)))  # noqa: E731
        out.append(MethodSummary(
            species, method, len(rows), macro,
            {c: float(np.nanmean(rec[:, i])) if np.isfinite(rec[:, i]).any() else math.nan
             for i, c in enumerate(C.EVENT_CLASSES)},
            stats(err("rbc_err_pct")), stats(err("plt_err_pct")), stats(err("retic_err_pt")),
            r2(np.array([r.rbc_fraction_true for r in rows]), np.array([r.rbc_fraction_pred for r in rows])),
        ))
    return out


def run(cfg: EvalConfig, jobs: int = 0, progress=None) -> tuple[list[MethodSummary], list[SampleScore]]:
    tasks = [(sp, k) for sp in cfg.species for k in range(cfg.samples)]
    scores = run_tasks(tasks, _init, cfg, _evaluate_one, jobs, progress)
    return summarize(scores), scores


def run_tasks(tasks: list, init, cfg, one, jobs: int = 0, progress=None) -> list:
    """``one(task)`` for every task (each returns a list), in order: in this process with ``jobs``
    1, else in single-threaded worker processes set up by ``init(cfg)``."""
    jobs = jobs or min(os.cpu_count() or 1, 2)
    rows: list = []
    if jobs <= 1:
        init(cfg)
        for t in tasks:
            rows.extend(one(t))
            if progress:
                progress()
    else:
        with single_threaded_workers(jobs, init, (cfg,)) as pool:
            for res in pool.map(one, tasks, chunksize=1):
                rows.extend(res)
                if progress:
                    progress()
    return rows


def overall_r2(scores: list[SampleScore], method: str) -> float:
    rows = [s for s in scores if s.method == method]
    return r2(np.array([r.rbc_fraction_true for r in rows]), np.array([r.rbc_fraction_pred for r in rows]))


def with_species(cfg: EvalConfig, species: tuple[str, ...]) -> EvalConfig:
    return replace(cfg, species=species)
