"""``edgehema evaluate --suite stress``: hard samples, and whether a wrong count ever goes unflagged.

Each *scenario* is a species, optional pathologies and interferences (``a+b``), and an instrument
that may differ from the one the models were trained on (channel gains, drift, trigger, flow,
noise bursts). Every sample is simulated fresh from seeds far from any used in training, classified
by each method exactly as the device does (``result_from_inference``: the same counting, QC and
flags), and judged against the laboratory acceptance limits below. A sample outside the limits
that carries no flag is a **silent failure**: the one outcome an analyzer may never produce.

The limits follow the CLIA 2024 acceptance criteria for proficiency testing: RBC +-4 %, PLT +-25 %
(below 40 x10^3/uL, +-10 x10^3/uL absolute: the relative limit is meaningless near zero), and
reticulocytes +-1 percentage point.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from edgehema.counts.counting import count_sample
from edgehema.counts.result import DEFAULT_AREA_FEATURES, elapsed_seconds, result_from_inference
from edgehema.evaluation.baselines import FixedGateClassifier
from edgehema.evaluation.evaluate import run_tasks
from edgehema.model.bundle import DEFAULT_BUNDLE
from edgehema.model.classifier import Classifier
from edgehema.simulator import InstrumentSettings
from edgehema.simulator import SampleSimulator

#: Acceptance limits (CLIA 2024 style).
RBC_LIMIT_PCT = 4.0
PLT_LIMIT_PCT = 25.0
PLT_LOW_RANGE = 40e3  # per uL: below it, the absolute limit applies
PLT_LIMIT_ABS = 10e3
RETIC_LIMIT_PT = 1.0
#: Evaluation seeds start here; training uses seeds below 10^8, ``evaluate`` 9x10^8 upwards.
STRESS_SEED_BASE = 950_000_000

METHODS = ("default", "fixed-gate")
#: The flag raised by a declared species the model was not trained on (result.py).
SPECIES_FLAG = "species_not_validated"
LIMITS_NOTE = (f"outside limits: RBC > {RBC_LIMIT_PCT:g} %, PLT > {PLT_LIMIT_PCT:g} % (below {PLT_LOW_RANGE / 1e3:g} "
               f"x10^3/uL: > {PLT_LIMIT_ABS / 1e3:g} x10^3/uL), RET > {RETIC_LIMIT_PT:g} point; silent: outside "
               "the limits with no flag")


def limits() -> dict:
    return {"rbc_pct": RBC_LIMIT_PCT, "plt_pct": PLT_LIMIT_PCT, "plt_low_range_per_ul": PLT_LOW_RANGE,
            "plt_abs_per_ul": PLT_LIMIT_ABS, "retic_points": RETIC_LIMIT_PT}


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str  # common | thrombocytopenia | interference | species | instrument
    species: str
    pathology: str | None = None
    #: InstrumentSettings fields that differ from the training instrument.
    instrument: tuple[tuple[str, object], ...] = ()
    #: Per sample, each channel's gain drawn uniformly within +-this (0: none).
    channel_gain_spread: float = 0.0
    description: str = ""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("human", "common", "human", description="healthy adults, training instrument"),
    Scenario("dog", "common", "dog"),
    Scenario("cat", "common", "cat"),
    Scenario("horse", "common", "horse"),
    Scenario("cattle", "common", "cattle"),
    Scenario("severe-thrombocytopenia", "thrombocytopenia", "human", "severe-thrombocytopenia",
             description="PLT 5-40 x10^3/uL"),
    Scenario("severe-thrombocytopenia+debris", "thrombocytopenia", "human", "severe-thrombocytopenia+debris",
             description="PLT 5-40 x10^3/uL with 10-60 x10^3/uL platelet-sized debris"),
    Scenario("dog severe-thrombocytopenia+debris", "thrombocytopenia", "dog", "severe-thrombocytopenia+debris"),
    Scenario("debris", "interference", "human", "debris", description="cell debris and lysis fragments"),
    Scenario("schistocytes", "interference", "human", "schistocytes", description="RBC fragments 1-6 %"),
    Scenario("giant-platelets", "interference", "human", "giant-platelets",
             description="10-30 % platelets at 3.5-6x MPV"),
    Scenario("lipemia", "interference", "human", "lipemia", description="lipid droplets"),
    Scenario("cold-agglutinins", "interference", "human", "cold-agglutinins", description="RBC agglutinates of 2-12"),
    Scenario("noise-bursts", "interference", "human", instrument=(("noise_bursts_per_s", 20.0),),
             description="microbubbles / electrical bursts, 20 per s"),
    Scenario("goat", "species", "goat", description="MCV 16-25 fL"),
    Scenario("sheep", "species", "sheep"),
    Scenario("alpaca", "species", "alpaca", description="elliptical red cells"),
    Scenario("rabbit", "species", "rabbit"),
    Scenario("ferret", "species", "ferret", description="weak reticulocyte stain signal"),
    Scenario("channel gains +-20%", "instrument", "human", channel_gain_spread=0.20,
             description="each channel's gain off by up to 20 %"),
    Scenario("dog channel gains +-20%", "instrument", "dog", channel_gain_spread=0.20),
    Scenario("drift +15%", "instrument", "human", instrument=(("gain_drift", 0.15),)),
    Scenario("drift -15%", "instrument", "human", instrument=(("gain_drift", -0.15),)),
    Scenario("trigger x2", "instrument", "human", instrument=(("trigger_threshold_adc", 120.0),)),
    Scenario("sheath flow -15%", "instrument", "human", instrument=(("velocity_um_per_us", 4.25),),
             description="cells pass 15 % slower: longer pulses"),
)


@dataclass(frozen=True)
class StressConfig:
    samples: int = 10
    events: int = 150_000
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    scenarios: tuple[str, ...] = tuple(s.name for s in SCENARIOS)
    model: str | None = None


@dataclass
class StressSample:
    scenario: str
    method: str
    index: int
    rbc_err_pct: float
    plt_err_pct: float
    plt_err_abs: float  # per uL
    plt_true: float  # per uL
    retic_err_pt: float
    flags: list[str] = field(default_factory=list)
    qc: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # which limits are exceeded

    @property
    def outside(self) -> bool:
        return bool(self.failures)

    @property
    def silent(self) -> bool:
        return self.outside and not self.flags

    @property
    def silent_undeclared(self) -> bool:
        """Silent if the species had not been declared: only the checks on the data itself count."""
        return self.outside and not [f for f in self.flags if f != SPECIES_FLAG]


def judge(rbc_err_pct: float, plt_err_pct: float, plt_err_abs: float, plt_true: float, retic_err_pt: float) -> list[str]:
    """The acceptance limits a result exceeds (empty: acceptable)."""
    out = []
    if abs(rbc_err_pct) > RBC_LIMIT_PCT:
        out.append("RBC")
    if plt_true < PLT_LOW_RANGE:
        if abs(plt_err_abs) > PLT_LIMIT_ABS:
            out.append("PLT")
    elif abs(plt_err_pct) > PLT_LIMIT_PCT:
        out.append("PLT")
    if abs(retic_err_pt) > RETIC_LIMIT_PT:
        out.append("RET")
    return out


def scenario(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise KeyError(f"unknown stress scenario {name!r} (known: {', '.join(s.name for s in SCENARIOS)})")


_state: dict = {}


def _init(cfg: StressConfig) -> None:

    _state["cfg"] = cfg
    methods = {}
    if "default" in cfg.methods:
        methods["default"] = Classifier(cfg.model or DEFAULT_BUNDLE, adapt=True, threads=1)
    if "fixed-gate" in cfg.methods:
        methods["fixed-gate"] = FixedGateClassifier()
    _state["methods"] = methods


def instrument_for(sc: Scenario, rng: np.random.Generator):

    ins = InstrumentSettings(**dict(sc.instrument))
    if sc.channel_gain_spread:
        gains = tuple(float(g) for g in 1.0 + rng.uniform(-sc.channel_gain_spread, sc.channel_gain_spread, 5))
        ins = replace(ins, channel_gain=gains)
    return ins


def _one(task: tuple[int, int]) -> list[StressSample]:
    from edgehema.evaluation.baselines import FixedGateClassifier

    si, k = task
    cfg: StressConfig = _state["cfg"]
    sc = scenario(cfg.scenarios[si])
    seed = STRESS_SEED_BASE + cfg.seed * 100_000 + 1_000 * [s.name for s in SCENARIOS].index(sc.name) + k
    ins = instrument_for(sc, np.random.default_rng(seed))
    sim = SampleSimulator(sc.species, sc.pathology, ins, seed=seed).generate(cfg.events)
    sample, truth = sim.sample, sim.truth
    per_ul = sample.info.dilution / sample.info.volume_ul
    out = []
    for name, method in _state["methods"].items():
        inf = method.infer(sample.events)
        if isinstance(method, FixedGateClassifier):
            counts = count_sample(sample.events, inf.probabilities, inf.labels, sample.profile, sample.info,
                                  DEFAULT_AREA_FEATURES, coincidence_window_us=sample.profile.coincidence_window_us,
                                  elapsed_s=elapsed_seconds(sample))
        else:
            counts = result_from_inference(sample, inf, method, time.perf_counter()).counts
        t = truth["cells"]
        c = counts.cells
        rbc = 100.0 * (c["rbc"] - t["rbc"]) / t["rbc"]
        plt_abs = (c["plt"] - t["plt"]) * per_ul
        plt_true = t["plt"] * per_ul
        plt_pct = 100.0 * (c["plt"] - t["plt"]) / t["plt"] if t["plt"] else math.inf
        ret = (counts.retic_percent or 0.0) - truth["retic_percent"]
        out.append(StressSample(sc.name, name, k, rbc, plt_pct, plt_abs, plt_true, ret, list(counts.flags), dict(counts.qc),
                                failures=judge(rbc, plt_pct, plt_abs, plt_true, ret)))
    return out


def run(cfg: StressConfig, jobs: int = 0, progress=None) -> list[StressSample]:

    tasks = [(i, k) for i in range(len(cfg.scenarios)) for k in range(cfg.samples)]
    return run_tasks(tasks, _init, cfg, _one, jobs, progress)


@dataclass
class ScenarioSummary:
    scenario: str
    group: str
    method: str
    n: int
    rbc_err: tuple[float, float]  # mean |%|, p95 |%|
    plt_err: tuple[float, float]
    plt_err_abs: tuple[float, float]  # x10^3/uL
    retic_err: tuple[float, float]
    outside: int
    flagged: int
    silent: int
    silent_undeclared: int
    false_alarms: int  # flagged although within limits
    flags: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(rows: list[StressSample], cfg: StressConfig) -> list[ScenarioSummary]:
    out = []
    for name in cfg.scenarios:
        sc = scenario(name)
        for method in cfg.methods:
            rs = [r for r in rows if r.scenario == name and r.method == method]
            if not rs:
                continue

            def stats(key: str, scale: float = 1.0) -> tuple[float, float]:
                a = np.abs(np.array([getattr(r, key) for r in rs], dtype=np.float64)) * scale
                a = a[np.isfinite(a)]
                return (float(a.mean()), float(np.percentile(a, 95))) if len(a) else (math.nan, math.nan)

            flags: dict[str, int] = {}
            for r in rs:
                for f in r.flags:
                    flags[f] = flags.get(f, 0) + 1
            out.append(ScenarioSummary(
                name, sc.group, method, len(rs), stats("rbc_err_pct"), stats("plt_err_pct"),
                stats("plt_err_abs", 1e-3), stats("retic_err_pt"),
                sum(r.outside for r in rs), sum(bool(r.flags) for r in rs), sum(r.silent for r in rs), sum(r.silent_undeclared for r in rs),
                sum(bool(r.flags) and not r.outside for r in rs), dict(sorted(flags.items(), key=lambda kv: -kv[1])),
            ))
    return out
