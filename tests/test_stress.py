"""Hard samples: the simulator's interferences, the plausibility flags, and the stress suite's verdict.

The CI version of ``edgehema evaluate --suite stress``: a fixed set of scenarios on held-out seeds,
where no result may be outside the acceptance limits without a flag.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from edgehema.model import classes as C
from edgehema.counts import plausibility
from edgehema.evaluation import stress
from edgehema.model.classifier import Classifier
from edgehema.cli import app
from edgehema.exceptions import SimulationError
from edgehema.counts.result import classify_sample
from edgehema.sample import Sample
from edgehema.simulator import InstrumentSettings, SampleSimulator, draw_parameters


def _digest(sim) -> str:
    return hashlib.sha1(sim.sample.events.tobytes() + sim.labels.tobytes()).hexdigest()


def test_plain_samples_keep_their_random_streams():
    # Interferences draw only when present: a sample with all of them at zero is the same sample.
    rng = np.random.default_rng(5)
    params = draw_parameters("human", rng)
    a = SampleSimulator("human", seed=11).generate(20_000, parameters=params)
    b = SampleSimulator("human", seed=11).generate(20_000, parameters=params.__class__(**{
        **params.__dict__, "lysis_debris_per_ul": 0.0, "schistocyte_fraction": 0.0, "lipid_per_ul": 0.0}))
    assert _digest(a) == _digest(b)


def test_pathologies_combine_and_unknown_ones_are_named():
    p = draw_parameters("human", np.random.default_rng(1), "severe-thrombocytopenia+debris")
    assert 5e3 <= p.plt_per_ul <= 40e3 and p.lysis_debris_per_ul >= 10e3
    with pytest.raises(SimulationError, match="unknown pathology 'nope'"):
        draw_parameters("human", np.random.default_rng(1), "debris+nope")


@pytest.mark.parametrize("pathology,kind_check", [
    # 10-60 x10^3/uL of debris is a tenth of a normal platelet count; much of it is below the trigger.
    ("debris", lambda plain, s: s.truth["events"]["noise"] > plain.truth["events"]["noise"] + 20),
    ("lipemia", lambda plain, s: s.truth["events"]["noise"] > 3 * plain.truth["events"]["noise"]),
    # Fragments are red cells: counted in RBC truth, never as platelets.
    ("schistocytes", lambda plain, s: s.truth["parameters"]["schistocyte_fraction"] >= 0.01
     and s.truth["cells"]["plt"] == int(s.n_plt.sum())),
    ("cold-agglutinins", lambda plain, s: s.truth["events"]["coincidence"] > 2 * plain.truth["events"]["coincidence"]),
    ("giant-platelets", lambda plain, s: s.truth["parameters"]["macroplatelet_fraction"] >= 0.10),
])
def test_each_interference_shows_in_the_events(pathology, kind_check):
    plain = SampleSimulator("human", seed=3).generate(60_000)
    s = SampleSimulator("human", pathology, seed=3).generate(60_000)
    assert kind_check(plain, s)


def test_instrument_variation_channel_gain_elongation_and_bursts():
    base = SampleSimulator("human", seed=4).generate(30_000)
    col = base.sample.profile.index
    gains = (1.2, 1.0, 1.0, 1.0, 0.8)  # fsc_lo, fsc_hi, ssc, fl, ext
    shifted = SampleSimulator("human", instrument=InstrumentSettings(channel_gain=gains), seed=4).generate(30_000)
    red0, red1 = base.labels == C.RBC, shifted.labels == C.RBC
    ratio = np.median(shifted.sample.events[red1, col("ext_peak")]) / np.median(base.sample.events[red0, col("ext_peak")])
    assert ratio == pytest.approx(0.8, rel=0.03)
    # Camelid red cells are long for their volume: longer pulses than a sphere of the same volume.
    rng = np.random.default_rng(2)
    p = draw_parameters("alpaca", rng)
    ellipse = SampleSimulator("alpaca", seed=6).generate(30_000, parameters=p)
    sphere = SampleSimulator("alpaca", seed=6).generate(30_000, parameters=p.__class__(**{**p.__dict__, "rbc_elongation": 1.0}))
    w = lambda s: np.median(s.sample.events[s.labels == C.RBC, col("ext_width")])  # noqa: E731
    assert w(ellipse) > 1.15 * w(sphere)
    bursts = SampleSimulator("human", instrument=InstrumentSettings(noise_bursts_per_s=20.0), seed=4).generate(30_000)
    assert bursts.truth["events"]["noise"] > base.truth["events"]["noise"] + 100


def test_poisson_expectation_matches_the_simulated_coincidences():
    s = SampleSimulator("human", seed=8).generate(100_000)
    elapsed = s.truth["elapsed_s"]
    expected = plausibility.expected_coincidence(100_000, elapsed, s.truth["coincidence"]["window_us"])
    observed = s.truth["events"]["coincidence"] / 100_000
    assert expected == pytest.approx(s.truth["coincidence"]["expected_fraction_poisson"], rel=0.15)
    assert observed == pytest.approx(expected, rel=0.25)
    assert plausibility.expected_coincidence(100, None, 5.0) is None


def test_acceptance_limits():
    assert stress.judge(3.9, 24.0, 0.0, 200e3, 0.9) == []
    assert stress.judge(-4.1, 0.0, 0.0, 200e3, 0.0) == ["RBC"]
    assert stress.judge(0.0, 26.0, 52e3, 200e3, 0.0) == ["PLT"]
    # Below 40 x10^3/uL the absolute limit decides: +60 % of 10k is 6k, acceptable.
    assert stress.judge(0.0, 60.0, 6e3, 10e3, 0.0) == []
    assert stress.judge(0.0, 110.0, 11e3, 10e3, 0.0) == ["PLT"]
    assert stress.judge(0.0, 0.0, 0.0, 200e3, -1.2) == ["RET"]


@pytest.fixture(scope="module")
def int8():
    return Classifier(threads=1)


def test_debris_is_excluded_from_platelets_and_flagged(int8):
    s = SampleSimulator("human", "severe-thrombocytopenia+debris", seed=950_000_123).generate(150_000)
    r = classify_sample(s.sample, int8)
    assert "plt_interference_debris" in r.counts.flags
    assert r.counts.qc["plt_unstained_excluded"] > 0.1 * s.truth["cells"]["plt"]
    # The stained debris subtracted moves the count towards the truth.
    sub = r.counts.qc["plt_stained_debris_subtracted"]
    true_plt = s.truth["cells"]["plt"]
    assert sub > 0 and abs(r.counts.cells["plt"] - true_plt) < abs(r.counts.cells["plt"] + sub - true_plt)
    clean = classify_sample(SampleSimulator("human", seed=950_000_124).generate(150_000).sample, int8)
    assert clean.counts.qc["plt_unstained_excluded"] < 0.01 * clean.counts.events["plt"]
    assert clean.counts.qc["plt_stained_debris_subtracted"] == 0
    assert not {"plt_interference_debris", "plt_interference_lipid", "population_not_recognised",
                "coincidence_implausible", "retic_abnormal_distribution"} & set(clean.counts.flags)


def test_an_unseen_species_is_flagged_and_not_told_to_dilute(int8):
    s = SampleSimulator("alpaca", seed=950_000_321).generate(150_000)
    r = classify_sample(s.sample, int8)
    assert "species_not_validated" in r.counts.flags
    # Coincidences beyond Poisson: flagged, or (adapted) the reason the adaptation was rejected.
    assert "coincidence_implausible" in r.counts.flags or \
        "coincidence_implausible" in r.counts.flag_details.get("adaptation_rejected", "")
    assert "high_coincidence" not in r.counts.flags  # diluting would not help
    # Without the declared species, the data checks alone still flag it.
    anonymous = Sample(s.sample.events, s.sample.profile, replace(s.sample.info, species=None))
    r = classify_sample(anonymous, int8)
    assert "species_not_validated" not in r.counts.flags and r.counts.flags


CI_SCENARIOS = ("human", "cat", "severe-thrombocytopenia", "severe-thrombocytopenia+debris", "lipemia",
                "cold-agglutinins", "noise-bursts", "goat", "alpaca", "ferret", "channel gains +-20%",
                "sheath flow -15%")


def test_stress_suite_has_no_silent_failures_on_the_fixed_set():
    cfg = stress.StressConfig(samples=3, events=150_000, seed=0, scenarios=CI_SCENARIOS)
    rows = stress.run(cfg, jobs=2)
    default = [r for r in rows if r.method == "default"]
    assert len(default) == 3 * len(CI_SCENARIOS)
    silent = [(r.scenario, r.index, r.failures) for r in default if r.silent]
    assert silent == []
    # The set is hard: many results are outside the limits, and the fixed gates fail silently on some.
    # (9 of 36 outside since red cells with a riding platelet are no longer read as clumps, 2026-12-08.)
    assert sum(r.outside for r in default) >= 8
    assert sum(r.silent for r in rows if r.method == "fixed-gate") >= 3
    # Healthy humans and cats carry none of the new flags (no false alarms there).
    new = set(plausibility.FLAG_TEXT) | {stress.SPECIES_FLAG}
    assert not [r.flags for r in default if r.scenario in ("human", "cat") and new & set(r.flags)]


def test_cli_stress_suite_json_and_bad_names():
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--suite", "stress", "--scenarios", "human,ferret", "--samples", "1",
                              "--events", "50000", "--json", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["totals"]["default"]["samples"] == 2
    assert {s["scenario"] for s in d["summary"]} == {"human", "ferret"}
    res = runner.invoke(app, ["evaluate", "--suite", "stress", "--scenarios", "human,yak"])
    assert res.exit_code == 2 and "unknown stress scenario 'yak'" in res.output
    res = runner.invoke(app, ["evaluate", "--suite", "bogus"])
    assert res.exit_code == 2 and "unknown suite" in res.output
