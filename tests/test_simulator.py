"""The simulator against its own presets and physics: statistics, Poisson coincidence, forward model."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from edgehema import SimulationError, get_profile, read_sample, write_sample
from edgehema.model.classes import COINCIDENCE, NOISE, PLT, RBC, RETIC
from edgehema.simulator import (
    PATHOLOGIES,
    SPECIES,
    InstrumentSettings,
    SampleSimulator,
    draw_parameters,
    species_preset,
)

PROFILE = get_profile("optical-11")
col = PROFILE.index


@pytest.fixture(scope="module")
def human():
    return SampleSimulator("human", seed=11).generate(300_000)


@pytest.fixture(scope="module")
def cat():
    return SampleSimulator("cat", seed=11).generate(300_000)


def test_deterministic_for_a_seed():
    a = SampleSimulator("dog", seed=5).generate(20_000)
    b = SampleSimulator("dog", seed=5).generate(20_000)
    c = SampleSimulator("dog", seed=6).generate(20_000)
    np.testing.assert_array_equal(a.sample.events, b.sample.events)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.truth == b.truth
    assert not np.array_equal(a.sample.events[:1000], c.sample.events[:1000])


def test_exact_event_count_and_consistent_truth(human):
    t = human.truth
    assert human.sample.n_events == 300_000 == t["events"]["total"]
    assert sum(t["events"][k] for k in ("rbc", "retic", "coincidence", "plt", "noise")) == 300_000
    assert t["cells"]["rbc"] == int(human.n_rbc.sum()) and t["cells"]["plt"] == int(human.n_plt.sum())
    assert t["cells"]["retic"] == int(human.n_retic.sum())
    # Labels agree with each event's composition.
    cells = human.n_rbc + human.n_plt
    assert np.all(cells[human.labels == NOISE] == 0)
    assert np.all(cells[human.labels == COINCIDENCE] >= 2)
    assert np.all((human.n_rbc == 1)[human.labels == RBC]) and np.all((human.n_retic == 0)[human.labels == RBC])
    assert np.all((human.n_retic == 1)[human.labels == RETIC])
    assert np.all((human.n_plt == 1)[human.labels == PLT])
    # cells.rbc counts reticulocytes and the cells inside coincidences.
    assert t["cells"]["rbc"] > t["events"]["rbc"] + t["events"]["retic"]
    assert np.all(np.diff(human.time_us) >= 0)
    # Every feature inside the profile's declared range.
    lo = np.array([f.range[0] for f in PROFILE.features])
    hi = np.array([f.range[1] for f in PROFILE.features])
    assert np.all(human.sample.events >= lo) and np.all(human.sample.events <= hi)


def test_truth_json_schema(human):
    t = json.loads(json.dumps(human.truth))
    assert {"sample_id", "species", "events", "cells", "concentration"} <= set(t)
    assert set(t["events"]) == {"rbc", "retic", "coincidence", "plt", "noise", "total"}
    assert set(t["cells"]) == {"rbc", "retic", "plt"}
    assert set(t["concentration"]) == {"rbc_per_uL", "plt_per_uL", "retic_per_uL"}
    assert t["species"] == "human"


def test_realised_cells_follow_the_drawn_parameters(human):
    p = human.parameters
    rbc_vol = human.volume_fl[human.labels == RBC]
    assert rbc_vol.mean() == pytest.approx(p.mcv_fl, rel=0.005)  # MCV
    assert rbc_vol.std() / rbc_vol.mean() == pytest.approx(p.rdw_cv, rel=0.05)  # RDW-CV
    f = p.macroplatelet_fraction
    expected_mpv = p.mpv_fl * ((1 - f) + f * p.macroplatelet_factor * math.exp(0.25**2 / 2))
    assert human.volume_fl[human.labels == PLT].mean() == pytest.approx(expected_mpv, rel=0.02)  # MPV
    n = human.truth["cells"]["rbc"]
    sd = math.sqrt(p.retic_fraction * (1 - p.retic_fraction) / n)
    assert abs(human.truth["retic_percent"] / 100 - p.retic_fraction) < 4 * sd  # retic %
    # Counts: the analyzed volume times the concentration gives the cells seen (Poisson), less
    # the platelets below the trigger threshold.
    expected_rbc = p.rbc_per_ul / human.truth["dilution"] * human.truth["volume_ul"]
    assert human.truth["cells"]["rbc"] == pytest.approx(expected_rbc, rel=0.01)
    expected_plt = p.plt_per_ul / human.truth["dilution"] * human.truth["volume_ul"]
    assert 0.95 * expected_plt < human.truth["cells"]["plt"] <= 1.02 * expected_plt


@pytest.mark.parametrize("species", sorted(SPECIES))
def test_drawn_parameters_centre_on_the_reference_interval(species):
    rng = np.random.default_rng(0)
    draws = [draw_parameters(species, rng) for _ in range(400)]
    sp = species_preset(species)
    mcv = np.array([d.mcv_fl for d in draws])
    assert mcv.min() >= sp.mcv_fl.lo and mcv.max() <= sp.mcv_fl.hi
    assert mcv.mean() == pytest.approx(sp.mcv_fl.mid, rel=0.02)
    assert np.mean([d.mpv_fl for d in draws]) == pytest.approx(sp.mpv_fl.mid, rel=0.03)
    assert np.mean([d.plt_per_ul for d in draws]) == pytest.approx(sp.plt_1e3_per_ul.mid * 1e3, rel=0.03)
    # The mean of 400 draws with sd a quarter of the interval: within 3 % of its width (ferret: 1-12 %).
    retic_tol = max(0.05, 0.03 * (sp.retic_percent.hi - sp.retic_percent.lo))
    assert np.mean([d.retic_fraction for d in draws]) * 100 == pytest.approx(sp.retic_percent.mid, abs=retic_tol)


def _coincidence_fraction(sim_sample) -> float:
    cell_events = sim_sample.labels != NOISE
    return float(np.mean(sim_sample.labels[cell_events] == COINCIDENCE))


def test_coincidence_rate_follows_poisson_occupancy():
    """Without aggregates, the share of coincidence events is 1 - exp(-rate x window).

    The rate comes from the preset concentrations, dilution and flow; the generator never uses the
    formula, it places arrivals in time and merges those closer than the window.
    """
    rng = np.random.default_rng(1)
    base = draw_parameters("human", rng)
    observed, expected = [], []
    for rbc in (3e6, 6e6, 12e6):
        p = replace(base, rbc_per_ul=rbc)
        s = SampleSimulator("human", seed=3).generate(400_000, parameters=p)
        ins = InstrumentSettings()
        rate_per_us = (p.rbc_per_ul + p.plt_per_ul) / ins.dilution * ins.sample_flow_ul_per_s * 1e-6
        rate_per_us += ins.debris_per_ul * ins.sample_flow_ul_per_s * 1e-6
        formula = 1 - math.exp(-rate_per_us * ins.coincidence_window_us)
        assert s.truth["coincidence"]["expected_fraction_poisson"] == pytest.approx(formula, rel=1e-4)
        observed.append(_coincidence_fraction(s))
        expected.append(formula)
    # Debris and sub-threshold particles take part in the occupancy but are not cells: a small,
    # known undercount; the binomial noise on 400k events is ~0.5 % relative.
    for o, e in zip(observed, expected):
        assert o == pytest.approx(e, rel=0.04)
    assert observed[0] < observed[1] < observed[2]


def test_dilution_changes_coincidences():
    p = draw_parameters("human", np.random.default_rng(2))
    dense = SampleSimulator("human", seed=1, instrument=InstrumentSettings(dilution=250)).generate(100_000, parameters=p)
    thin = SampleSimulator("human", seed=1, instrument=InstrumentSettings(dilution=1000)).generate(100_000, parameters=p)
    assert _coincidence_fraction(dense) > 3 * _coincidence_fraction(thin)


def test_coincidence_pulses_are_additive_in_area_subadditive_in_peak(human):
    ev = human.sample.events
    single = ev[human.labels == RBC]
    doublet = ev[(human.labels == COINCIDENCE) & (human.n_rbc == 2) & (human.n_plt == 0)]
    assert len(doublet) > 1000
    for area in ("ext_area", "fsc_lo_area"):
        assert doublet[:, col(area)].mean() / single[:, col(area)].mean() == pytest.approx(2.0, rel=0.05)
    for peak in ("ext_peak", "fsc_lo_peak"):
        ratio = doublet[:, col(peak)].mean() / single[:, col(peak)].mean()
        assert 1.1 < ratio < 1.9
    assert doublet[:, col("ext_width")].mean() > 1.3 * single[:, col("ext_width")].mean()


def test_forward_model_ties_features_to_cells(human, cat):
    ev, lab = human.sample.events, human.labels
    rbc = lab == RBC
    # Axial light loss tracks cell volume.
    assert np.corrcoef(ev[rbc, col("ext_area")], human.volume_fl[rbc])[0, 1] > 0.75
    # Reticulocyte RNA lights up the fluorescence channel.
    assert np.median(ev[lab == RETIC, col("fl_peak")]) > 8 * np.median(ev[rbc, col("fl_peak")])
    # Human platelets are far smaller than red cells; cat macroplatelets overlap cat red cells.
    def overlap(s):
        e = s.sample.events[:, col("ext_peak")]
        small_rbc = np.percentile(e[s.labels == RBC], 2)
        return np.mean(e[s.labels == PLT] > small_rbc)

    assert overlap(human) < 0.01
    assert overlap(cat) > 3 * max(overlap(human), 0.002)
    # Cat red cells are microcytic: smaller scatter than human.
    assert np.median(cat.sample.events[cat.labels == RBC, col("ext_peak")]) < 0.8 * np.median(ev[rbc, col("ext_peak")])


def test_cat_aggregates_add_coincidences(cat, human):
    assert cat.truth["coincidence"]["aggregate_events"] > 0
    assert human.truth["coincidence"]["aggregate_events"] == 0
    expected = cat.truth["coincidence"]["expected_fraction_poisson"]
    assert _coincidence_fraction(cat) > 1.2 * expected  # clumps on top of chance coincidences


def test_gain_drift_raises_late_signals():
    p = draw_parameters("human", np.random.default_rng(4))
    s = SampleSimulator("human", seed=2, instrument=InstrumentSettings(gain_drift=0.10)).generate(200_000, parameters=p)
    e = s.sample.events[:, col("ext_peak")]
    rbc = s.labels == RBC
    n = len(e)
    early = np.median(e[:n // 10][rbc[:n // 10]])
    late = np.median(e[-n // 10:][rbc[-n // 10:]])
    assert 1.06 < late / early < 1.13


@pytest.mark.parametrize("pathology", sorted(PATHOLOGIES))
def test_pathology_presets_shift_the_blood(pathology):
    healthy = [draw_parameters("dog", np.random.default_rng(i)) for i in range(50)]
    sick = [draw_parameters("dog", np.random.default_rng(i), pathology) for i in range(50)]
    mean = lambda draws, key: np.mean([getattr(d, key) for d in draws])  # noqa: E731
    if pathology == "anemia-reticulocytosis":
        assert mean(sick, "rbc_per_ul") < 0.7 * mean(healthy, "rbc_per_ul")
        assert min(d.retic_fraction for d in sick) >= 0.05
    elif pathology == "thrombocytopenia":
        assert max(d.plt_per_ul for d in sick) <= 80e3
    elif pathology == "thrombocytosis":
        assert mean(sick, "plt_per_ul") > 2 * mean(healthy, "plt_per_ul")
    elif pathology == "macrocytosis":
        assert mean(sick, "mcv_fl") > 1.15 * mean(healthy, "mcv_fl")
    elif pathology == "microcytosis":
        assert mean(sick, "mcv_fl") < 0.82 * mean(healthy, "mcv_fl")
        assert mean(sick, "mchc_g_dl") < mean(healthy, "mchc_g_dl")


def test_reticulocytosis_is_immature():
    healthy = SampleSimulator("human", seed=8).generate(100_000)
    anemic = SampleSimulator("human", pathology="anemia-reticulocytosis", seed=8).generate(100_000)
    assert anemic.truth["retic_percent"] > 4.5
    assert anemic.truth["retic_maturity"]["irf_percent"] > healthy.truth["retic_maturity"]["irf_percent"] + 10


def test_unknown_presets_are_clear_errors():
    with pytest.raises(SimulationError, match="unknown species 'unicorn'"):
        SampleSimulator("unicorn")
    with pytest.raises(SimulationError, match="unknown pathology 'flu'"):
        SampleSimulator("dog", pathology="flu")
    with pytest.raises(SimulationError, match="at least 1 event"):
        SampleSimulator("dog").generate(0)


def test_sysmex_profile_simulation_round_trips(tmp_path):
    s = SampleSimulator("dog", profile="sysmex-xn-ret", seed=1).generate(70_000)
    assert s.sample.feature_names == ("FSC", "SSC", "SFL", "FSCW")
    assert np.all(s.sample.events == np.rint(s.sample.events))  # channel numbers are integers
    written = write_sample(s.sample, tmp_path / "D.116.csv")
    back = read_sample(written[0])
    np.testing.assert_array_equal(back.events, s.sample.events)
    assert back.info.dilution == s.sample.info.dilution and back.info.species == "dog"


def test_streams_the_same_sample_in_batches():
    """The generator is separate from the writers: an emulator can slice one sample into batches."""
    s = SampleSimulator("human", seed=9).generate(10_000)
    batches = [s.sample.events[i : i + 512] for i in range(0, s.sample.n_events, 512)]
    np.testing.assert_array_equal(np.concatenate(batches), s.sample.events)
