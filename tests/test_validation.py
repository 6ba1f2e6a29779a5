"""edgehema validate: the method-verification kit (issue 38).

Every statistic against a published worked example or an independent computation; the plan's
problems one line each; the simulated experiments end to end, including a carry-over the
simulated instrument was given and the kit must find.
"""

import csv
import json
import math
import os
import re
import statistics as pystats
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path

import numpy as np
import pytest

from edgehema.exceptions import ValidationPlanError
from edgehema.simulator.experiments import write_experiments
from edgehema.validation import load_limits, read_plan, verify
from edgehema.validation import statistics as st


def run(*args, timeout=300):
    env = dict(os.environ, COLUMNS="160")
    return subprocess.run([sys.executable, "-m", "edgehema", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ------------------------------------------------------------------ statistics
# R package mcr, mcreg(x, y, method.reg = "PaBa", method.ci = "analytical", alpha = 0.05), as quoted
# in methcomp's test suite (tests/test_regression.py, "Check with R package mcr").
MCR_X = list(range(1, 21))
MCR_Y = [1.03, 2.05, 2.79, 3.67, 5.00, 5.82, 7.16, 7.69, 8.53, 10.38, 11.11, 12.17, 13.47, 13.83, 15.15, 16.12,
         16.94, 18.09, 19.13, 19.54]


def test_passing_bablok_matches_r_mcr_worked_example():
    pb = st.passing_bablok(MCR_X, MCR_Y)
    # The point estimates agree to the figures mcr prints.
    assert pb.slope == pytest.approx(1.0050, abs=5e-5)
    assert pb.intercept == pytest.approx(0.0125, abs=5e-5)
    # mcr's interval ends are means of two neighbouring order statistics (0.98481 = (s65 + s66) / 2);
    # the paper's (and ours) are the order statistics M1 + K and M2 + K themselves: the two agree
    # to the neighbouring slope.
    assert pb.slope_ci[0] == pytest.approx(0.9848077, abs=5e-4)
    assert pb.slope_ci[1] == pytest.approx(1.0265805, abs=1.5e-3)
    assert pb.intercept_ci[0] == pytest.approx(-0.2975146, abs=0.015)
    assert pb.intercept_ci[1] == pytest.approx(0.1393271, abs=0.005)
    assert pb.slope_ci[0] < pb.slope < pb.slope_ci[1]


def _passing_bablok_by_the_paper(x, y, z=1.959963984540054):
    """Passing & Bablok (1983) step by step, in plain Python: an independent computation."""
    n = len(x)
    slopes = []
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[j] - x[i], y[j] - y[i]
            if dx == 0 and dy == 0:
                continue
            s = math.copysign(math.inf, dy) if dx == 0 else dy / dx
            if s != -1:
                slopes.append(s)
    slopes.sort()
    N = len(slopes)
    K = sum(1 for s in slopes if s < -1)
    b = slopes[(N + 1) // 2 + K - 1] if N % 2 else (slopes[N // 2 + K - 1] + slopes[N // 2 + K]) / 2
    C = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    M1 = round((N - C) / 2)
    M2 = N - M1 + 1
    lo, hi = slopes[M1 + K - 1], slopes[M2 + K - 1]
    a = pystats.median([yi - b * xi for xi, yi in zip(x, y)])
    return b, (lo, hi), a, (pystats.median([yi - hi * xi for xi, yi in zip(x, y)]),
                            pystats.median([yi - lo * xi for xi, yi in zip(x, y)]))


@pytest.mark.parametrize("seed", range(6))
def test_passing_bablok_equals_the_papers_steps_with_ties_and_negative_slopes(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(12, 45))
    x = np.round(rng.uniform(1, 50, n), 0)  # rounded: ties in x, vertical pairs, identical pairs
    y = np.round(0.9 * x + 2 + rng.normal(0, 4 + seed, n), 0)
    pb = st.passing_bablok(x, y)
    b, (lo, hi), a, (alo, ahi) = _passing_bablok_by_the_paper(x.tolist(), y.tolist())
    assert (pb.slope, *pb.slope_ci, pb.intercept, *pb.intercept_ci) == pytest.approx((b, lo, hi, a, alo, ahi))
    assert sum(1 for i in range(n) for j in range(i + 1, n) if x[j] != x[i] and (y[j] - y[i]) / (x[j] - x[i]) < -1)


def test_passing_bablok_recovers_an_exact_line_and_rejects_too_few_pairs():
    x = np.arange(1.0, 31.0)
    pb = st.passing_bablok(x, 3.0 + 1.25 * x)
    assert pb.slope == pytest.approx(1.25) and pb.intercept == pytest.approx(3.0)
    assert pb.slope_ci == pytest.approx((1.25, 1.25))
    with pytest.raises(ValueError):
        st.passing_bablok([1, 2], [1, 2])


def test_bland_altman_matches_the_lancet_1986_peak_flow_example():
    # Bland & Altman, Lancet 1986;i:307-310, table 1: first readings of the Wright and the mini
    # Wright peak flow meters in 17 subjects. Published: mean difference -2.1 l/min, SD 38.8 l/min,
    # limits (mean +- 2 SD) -79.7 to 75.5.
    wright = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
    mini = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]
    ba = st.bland_altman(wright, mini)
    assert round(ba.bias, 1) == -2.1 and round(ba.sd, 1) == 38.8
    # The paper's limits are from its rounded figures: -2.1 -+ 2 x 38.8.
    assert round(round(ba.bias, 1) - 2 * round(ba.sd, 1), 1) == -79.7
    assert round(round(ba.bias, 1) + 2 * round(ba.sd, 1), 1) == 75.5
    assert ba.loa == pytest.approx((ba.bias - 1.96 * ba.sd, ba.bias + 1.96 * ba.sd))


def test_relative_differences_are_percent_of_the_pairs_mean():
    ba = st.bland_altman([102.0, 99.0], [98.0, 101.0], relative=True)
    assert ba.bias == pytest.approx((4 / 100 * 100 + -2 / 100 * 100) / 2)


def test_carryover_least_squares_and_spread_against_independent_computations():
    # ICSH: (L1 - L3) / (H3 - L3) x 100.
    assert st.carryover_percent([10.0, 10.1, 10.0], [1.09, 1.0, 1.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        st.carryover_percent([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    rng = np.random.default_rng(1)
    x = np.linspace(0.05, 1, 9)
    y = 5e6 * x + rng.normal(0, 3e4, 9)
    line = st.least_squares(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert (line.slope, line.intercept) == pytest.approx((slope, intercept))
    assert line.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    values = rng.normal(300e3, 5e3, 10).tolist()
    s = st.spread(values)
    assert s.sd == pytest.approx(pystats.stdev(values)) and s.mean == pytest.approx(pystats.fmean(values))
    assert s.cv_percent == pytest.approx(100 * pystats.stdev(values) / pystats.fmean(values))


# ------------------------------------------------------------------ limits and plan
def test_default_limits_cite_their_sources_and_a_lab_file_overrides_per_key(tmp_path):
    limits = load_limits()
    assert limits.get("carryover", "max_percent")["PLT"] == 1.0
    assert limits.per_analyte("comparison", "allowable_percent") == {"RBC": 4.0, "PLT": 25.0, "RET#": 25.0}
    text = (Path(load_limits.__globals__["DEFAULTS"])).read_text()
    for source in ("Briggs C et al.", "42 CFR 493.941", "Sandberg S", "PMID 1497462", "Estcourt LJ"):
        assert source in text
    own = tmp_path / "lab.toml"
    own.write_text("[repeatability]\ncv_max_percent = { PLT = 2.0 }\n[loq]\ncv_goal_percent = 10\n")
    lab = load_limits(own)
    assert lab.per_analyte("repeatability", "cv_max_percent") == {"RBC": 1.5, "PLT": 2.0, "RET%": 5.5, "RET#": 5.5}
    assert lab.get("loq", "cv_goal_percent") == 10 and lab.source == str(own)


def test_a_bad_limits_file_is_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[repeatability]\ncv_max_percent = { RBC = -1, WBC = 2 }\nfoo = 1\n[bar]\nx = 1\n")
    with pytest.raises(ValidationPlanError) as info:
        load_limits(bad)
    p = info.value.problems
    assert len(p) == 3 and all(line.startswith(str(bad)) for line in p)
    assert "WBC" in p[0] and "RBC: not a positive number" in p[0] and "'foo'" in p[1] and "[bar]" in p[2]
    broken = tmp_path / "broken.toml"
    broken.write_text("[repeatability\n")
    with pytest.raises(ValidationPlanError, match="invalid TOML"):
        load_limits(broken)


@pytest.fixture(scope="module")
def verification_set(tmp_path_factory):
    """All five experiments on the simulated instrument (small runs: 20,000 events a normal sample)."""
    out = tmp_path_factory.mktemp("verification")
    plan = write_experiments(out, events=20_000, seed=5)
    return out, plan


def _write_plan(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "experiment", "group", "order", "ref_rbc_per_ul"])
        w.writerows(rows)
    return path


def test_a_bad_plan_is_one_line_per_problem_and_exit_1_before_classifying(verification_set, tmp_path):
    out, _ = verification_set
    rep = sorted((out / "repeatability").glob("normal-*.csv"))
    carry = sorted((out / "carryover").glob("*.csv"))
    rows = [[str(p), "repeatability", "normal", ""] for p in rep[:3]]  # too few replicates
    rows += [[str(p), "carryover", "1", str(k + 1)] for k, p in enumerate(carry) if k != 2]  # order 3 missing
    rows += [[str(carry[0]), "carryover", "1", "2"]]  # order 2 twice
    rows += [["nowhere.csv", "repeatability", "normal", ""], [str(rep[0]), "precision", "x", ""],
             [str(rep[0]), "linearity", "2", ""], [str(rep[0]), "comparison", "", "", "lots"]]
    plan = _write_plan(tmp_path / "plan.csv", rows)
    proc = run("validate", plan)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("edgehema: error: ") for line in lines) and "Traceback" not in proc.stderr
    text = proc.stderr
    assert "nowhere.csv: no such file" in text
    assert "unknown experiment 'precision'" in text
    assert "linearity group '2' is not a dilution fraction" in text
    assert "ref_rbc_per_ul 'lots' is not a number" in text
    assert "repeatability group 'normal': 3 replicate(s), at least 5" in text
    assert "carryover group '1': the sequence is out of order (order 2 more than once; order 3 missing)" in text
    assert len(lines) == 6
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "is empty" in run("validate", empty).stderr
    headerless = _write_plan(tmp_path / "h.csv", [])
    headerless.write_text("name,kind\nx,y\n")
    proc = run("validate", headerless)
    assert proc.returncode == 1 and "no column 'file'" in proc.stderr and "no column 'order'" in proc.stderr


def test_plan_files_are_relative_to_the_plan_and_groups_are_kept(verification_set):
    out, plan_path = verification_set
    plan = read_plan(plan_path, load_limits())
    assert {r.experiment for r in plan.runs} == {"repeatability", "carryover", "linearity", "comparison", "loq"}
    assert all(r.file.is_file() for r in plan.runs)
    assert sorted(plan.groups("repeatability")) == ["low-plt", "normal"]
    assert sorted(r.order for r in plan.of("carryover")) == [1, 2, 3, 4, 5, 6]
    assert len({r.fraction for r in plan.of("linearity")}) == 7
    assert len(plan.of("comparison")) == 40 and all("RBC" in r.reference and "RET%" in r.reference
                                                    for r in plan.of("comparison"))


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def validated(verification_set):
    out, plan = verification_set
    html = out / "report.html"
    proc = run("validate", plan, "--json", "--html", html)
    return proc, html


def test_validate_json_has_every_experiment_and_figure(validated):
    proc, _ = validated
    assert proc.returncode in (0, 1), proc.stderr
    d = json.loads(proc.stdout)
    assert set(d) >= {"repeatability", "carryover", "linearity", "comparison", "loq", "verdict"}
    assert d["verdict"] == ("pass" if proc.returncode == 0 else "fail")
    assert {i["analyte"] for i in d["repeatability"]} == {"RBC", "PLT", "RET%", "RET#"}
    for i in d["repeatability"]:
        assert i["n"] == 10 and i["cv_percent"] == pytest.approx(100 * pystats.stdev(i["values"]) / pystats.fmean(i["values"]), rel=1e-4)
        assert i["pass"] == (i["cv_percent"] <= i["limit_cv_percent"])
    for i in d["carryover"]:
        h, lo = i["high"], i["low"]
        assert i["carryover_percent"] == pytest.approx((lo[0] - lo[2]) / (h[2] - lo[2]) * 100, rel=1e-4)
    for i in d["linearity"]:
        assert {"slope", "intercept", "r2", "max_deviation_percent", "pass"} <= set(i) and len(i["levels"]) == 7
        assert i["r2"] > (0.99 if i["analyte"] != "RET#" else 0.95)  # RET#: few reticulocytes in 20,000 events
    by = {i["analyte"]: i for i in d["comparison"]}
    assert set(by) == {"RBC", "PLT", "RET%"}
    for i in by.values():
        assert {"slope", "intercept", "bias", "loa_low", "loa_high", "slope_ci", "intercept_ci", "n"} <= set(i)
        assert i["n"] == 40 and i["loa_low"] < i["bias"] < i["loa_high"]
        pb = st.passing_bablok(i["reference"], i["values"])
        # The JSON's values are rounded to 6 significant digits: the slope of the rounded pairs is
        # another pair's slope within about 1e-5.
        assert i["slope"] == pytest.approx(pb.slope, rel=1e-4)
    # The shipped model counts the simulated instrument's red cells and platelets without bias.
    assert abs(by["RBC"]["bias"]) < 2 and 0.97 < by["RBC"]["slope"] < 1.03
    assert abs(by["PLT"]["bias"]) < 5
    (loq,) = d["loq"]
    assert loq["analyte"] == "PLT" and [lv["group"] for lv in loq["levels"]] == ["PLT 5", "PLT 10", "PLT 20", "PLT 40"]
    assert loq["loq"] is None or loq["loq"] in [lv["mean"] for lv in loq["levels"]]
    assert d["run"]["software"] and d["run"]["engine"] and d["run"]["model"].startswith("edgehema-reference")


def test_validate_html_is_one_page_with_a_plot_per_experiment(validated):
    _, html = validated
    text = html.read_text()
    svgs = re.findall(r"<svg.*?</svg>", text, re.S)
    for s in svgs:
        xml.dom.minidom.parseString(s)  # well-formed
    titles = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", text))
    for wanted in ("CV", "carry-over", "r2", "Passing-Bablok", "Bland-Altman", "CV by level"):
        assert wanted in titles
    assert len(svgs) == 8 + 3 + 3 + 2 * 3 + 1
    assert "Model: edgehema-reference" in text and "Engine: " in text and "Software: edgehema " in text
    assert "http" not in text.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_tight_limits_fail_the_figure_and_exit_1(verification_set, tmp_path):
    _, plan = verification_set
    strict = tmp_path / "strict.toml"
    strict.write_text("[repeatability]\ncv_max_percent = { PLT = 0.01 }\n")
    proc = run("validate", plan, "--limits", strict, "--json")
    assert proc.returncode == 1
    d = json.loads(proc.stdout)
    assert d["verdict"] == "fail"
    assert [i["pass"] for i in d["repeatability"] if i["analyte"] == "PLT"] == [False, False]
    proc = run("validate", plan, "--limits", strict)
    assert proc.returncode == 1 and "verdict: FAIL" in proc.stdout and "FAIL" in proc.stdout.split("Carry")[0]


def test_a_broken_file_is_one_error_line_and_the_others_still_count(verification_set, tmp_path):
    out, plan = verification_set
    rows = list(csv.reader(open(plan)))
    broken = tmp_path / "broken.csv"
    src = (out / rows[1][0]).read_text().splitlines()
    broken.write_text("\n".join(src[:40] + ["1,2,abc"] + src[40:]) + "\n")
    rows[1][0] = str(broken)
    for r in rows[2:]:
        r[0] = str(out / r[0])
    bad_plan = tmp_path / "plan.csv"
    with open(bad_plan, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    proc = run("validate", bad_plan, "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgehema: error:")]
    assert len(errors) == 1 and str(broken) in errors[0]
    d = json.loads(proc.stdout)
    assert d["verdict"] == "fail" and any(str(broken) in p for p in d["problems"])
    # The broken replicate's group is not judged; the other group and experiments are.
    assert {i["group"] for i in d["repeatability"]} == {"low-plt"} and d["comparison"] and d["loq"]


def _carryover_found(tmp_path, carryover: float) -> dict:
    plan = write_experiments(tmp_path, ["carryover"], events=60_000, seed=2, carryover=carryover)
    limits = load_limits()
    p = read_plan(plan, limits)
    proc = run("classify", *[str(r.file) for r in sorted(p.runs, key=lambda r: r.order)], "--json")
    results = {Path(r.file): json.loads(line) for r, line in zip(sorted(p.runs, key=lambda r: r.order),
                                                                  proc.stdout.splitlines())}
    v = verify(p, results, limits)
    return {i["analyte"]: i["carryover_percent"] for i in v.carryover}


def test_the_kit_finds_the_carryover_the_simulated_instrument_has(tmp_path):
    found = _carryover_found(tmp_path / "c5", 0.05)
    # 5 % of each run stays for the next: L1 holds 5 % of H3 (less the little the low sample adds).
    assert found["RBC"] == pytest.approx(5.0, abs=0.8) and found["PLT"] == pytest.approx(5.0, abs=0.8)
    none = _carryover_found(tmp_path / "c0", 0.0)
    assert abs(none["RBC"]) < 0.8 and abs(none["PLT"]) < 0.8


def test_simulate_experiment_writes_the_files_and_plan_and_refuses_unknown_ones(tmp_path):
    proc = run("simulate", "--experiment", "linearity,loq", "--events", "5000", "--out", tmp_path / "v")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "v" / "plan.csv")))
    assert {r["experiment"] for r in rows} == {"linearity", "loq"} and len(rows) == 7 + 20
    assert all((tmp_path / "v" / r["file"]).is_file() for r in rows)
    proc = run("simulate", "--experiment", "precision", "--out", tmp_path / "w")
    assert proc.returncode == 1 and "unknown experiment(s) precision" in proc.stderr


def test_stream_archives_are_runs_too(tmp_path):
    from edgehema.simulator.emulator import InstrumentEmulator, write_file

    rows = []
    for k in range(5):
        write_file(InstrumentEmulator("dog", samples=1, events=8000, seed=40 + k), str(tmp_path / f"run{k}.ehw"))
        rows.append([f"run{k}.ehw", "repeatability", "dog", ""])
    write_file(InstrumentEmulator("dog", samples=2, events=4000, seed=50), str(tmp_path / "two.ehw"))
    plan = _write_plan(tmp_path / "plan.csv", rows)
    proc = run("validate", plan, "--json")
    d = json.loads(proc.stdout)
    rbc = [i for i in d["repeatability"] if i["analyte"] == "RBC"][0]
    assert rbc["n"] == 5 and all(v > 1e6 for v in rbc["values"])  # replayed, counted, concentrations known
    plan = _write_plan(tmp_path / "plan2.csv", rows[:4] + [["two.ehw", "repeatability", "dog", ""]])
    proc = run("validate", plan, "--json")
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if "two.ehw: holds 2 samples" in line]
