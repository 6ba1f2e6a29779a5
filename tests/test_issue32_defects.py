"""Smaller defects a new user met (issue 32 items 5-8), each with a test that failed before its fix."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from edgehema.sinks.table_sink import TableSink

RESULT = {
    "sample_id": "hospital-ward-7-patient-000123-run-2", "species": "cat",
    "events": {"total": 150000, "coincidence": 6410}, "cells": {"rbc": 148725, "plt": 7972},
    "retic_percent": 0.27, "concentration": {"rbc_per_uL": 7.49e6, "plt_per_uL": 401e3, "retic_per_uL": 2e4},
    "flags": ["platelet_clumps_suspected", "species_not_validated"],
    "model": {"name": "m", "version": "1", "sha256": "ab" * 32, "backend": "tflite"},
}


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgehema", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, COLUMNS="80"))


class Tty(io.StringIO):
    def isatty(self):
        return True


def _table(width, results):
    import edgehema.sinks.text_table as tt

    buf = Tty()
    sink = TableSink(buf)
    for r in results:
        sink.write(r)
    original = tt.Console

    def narrow(*a, **k):
        k["width"] = width
        return original(*a, **k)

    tt.Console = narrow
    try:
        sink.close()
    finally:
        tt.Console = original
    return buf.getvalue()


# 6 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [50, 70, 80])
def test_a_narrow_terminal_shows_every_id_whole_and_every_result_and_flag(width):
    a = dict(RESULT)
    b = dict(RESULT, sample_id="hospital-ward-7-patient-000123-run-3", flags=["coincidence_high"])
    text = _table(width, [a, b])
    assert "hospital-ward-7-patient-000123-run-2" in text and "hospital-ward-7-patient-000123-run-3" in text
    assert "…" not in text and "\x1b" not in text  # nothing cut, no escape codes
    for needle in ("PLT x10^3/uL", "401", "148,725", "platelet_clumps_suspected", "species_not_validated",
                   "coincidence_high", "0.020"):
        assert needle in text, (needle, text)
    assert max(len(line) for line in text.splitlines()) <= max(width, 36)


def test_a_wide_terminal_keeps_the_table():
    text = _table(220, [RESULT])
    assert "┏" in text and "sample" in text and "PLT x10^3/uL" in text


# 5 ---------------------------------------------------------------------------------------------
def test_writing_a_non_sysmex_sample_as_116_csv_is_refused_and_reading_one_says_why(tmp_path):
    import edgehema
    from edgehema.exceptions import InputFileError
    from edgehema.simulator import SampleSimulator

    sim = SampleSimulator("cat", seed=7).generate(2000)
    with pytest.raises(InputFileError, match="Sysmex XN layout, for samples of profile sysmex-xn-ret"):
        edgehema.write_sample(sim.sample, tmp_path / "s.116.csv")
    assert not (tmp_path / "s.116.csv").exists()
    # The README's example, as it reads now, works end to end.
    xn = SampleSimulator("cat", profile="sysmex-xn-ret", seed=7).generate(2000)
    edgehema.write_sample(xn.sample, tmp_path / "xn.116.csv")
    assert edgehema.read_sample(tmp_path / "xn.116.csv").profile.name == "sysmex-xn-ret"
    # A file someone named .116.csv that holds another profile: the error names the profile its metadata gives.
    edgehema.write_sample(sim.sample, tmp_path / "s.csv")
    (tmp_path / "s.csv").rename(tmp_path / "r.116.csv")
    (tmp_path / "s.meta.json").rename(tmp_path / "r.116.meta.json")
    proc = run("classify", str(tmp_path / "r.116.csv"))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "names profile optical-11" in proc.stderr and "r.csv" in proc.stderr


def test_the_sysmex_message_names_edgehema_train(tmp_path):
    run("simulate", "--events", "3000", "--out", str(tmp_path / "x.116.csv"), "--profile", "sysmex-xn-ret", "-q")
    proc = run("classify", str(tmp_path / "x.116.csv"))
    assert proc.returncode == 1 and "edgehema train" in proc.stderr and "--model BUNDLE" in proc.stderr


# 7 ---------------------------------------------------------------------------------------------
def test_inspect_reports_what_data_holds_and_what_tot_declares(tmp_path):
    run("simulate", "--species", "cat", "--events", "20000", "--seed", "7", "--out", str(tmp_path / "s.fcs"), "-q")
    data = (tmp_path / "s.fcs").read_bytes()
    i = data.find(b"$TOT")
    sep = data[i + 4:i + 5]
    (tmp_path / "tot.fcs").write_bytes(data.replace(b"$TOT" + sep + b"20000", b"$TOT" + sep + b"20100"))
    text = run("inspect", str(tmp_path / "tot.fcs")).stdout
    assert "20,000 events ($TOT says 20,100)" in text.splitlines()[0], text
    info = json.loads(run("inspect", "--json", str(tmp_path / "tot.fcs")).stdout)
    assert info["events"] == 20000 and info["events_tot"] == 20100
    classified = json.loads(run("classify", "--json", str(tmp_path / "tot.fcs")).stdout)
    assert classified["events"]["total"] == info["events"]


# 8 ---------------------------------------------------------------------------------------------
def test_missing_concentrations_say_why(tmp_path):
    run("simulate", "--species", "dog", "--events", "3000", "--out", str(tmp_path / "d.csv"), "-q")
    (tmp_path / "d.meta.json").unlink()  # no metadata: no dilution, no volume
    r = json.loads(run("classify", "--json", "--dilution", "500", str(tmp_path / "d.csv")).stdout)
    assert r["concentration"]["rbc_per_uL"] is None
    assert "the analysed volume (--volume-ul)" in r["concentration_note"] and "dilution" not in r["concentration_note"]
    table = run("classify", "--dilution", "500", str(tmp_path / "d.csv")).stdout
    assert "concentrations '-'" in table and "--volume-ul" in table
    both = json.loads(run("classify", "--json", "--dilution", "500", "--volume-ul", "20", str(tmp_path / "d.csv")).stdout)
    assert both["concentration"]["rbc_per_uL"] is not None and "concentration_note" not in both


def test_help_names_arguments_plainly():
    for command, name in (("classify", "FILE..."), ("replay", "ARCHIVE..."), ("smear", "[IMAGE...]"),
                          ("train", "DATA...")):
        text = run(command, "--help").stdout
        usage = text.splitlines()[0]
        assert usage.endswith(name), usage
        assert "{" not in usage and "<list[" not in text, text[:400]


def test_profiles_columns_line_up():
    text = run("profiles").stdout
    for block in text.split("\n" + "sysmex"):
        rows = [line for line in block.splitlines() if line.startswith("  ")]
        starts = {line.index("]") for line in rows}
        descriptions = {len(line[: line.index("]") + 1]) + len(line[line.index("]") + 1:]) -
                        len(line[line.index("]") + 1:].lstrip()) for line in rows}
        assert len(descriptions) == 1, rows  # every description starts in the same column
        assert starts


def test_an_interlaced_png_too_large_to_decode_whole_is_refused_in_one_line(tmp_path, monkeypatch):
    pyvips = pytest.importorskip("pyvips", reason="pyvips (the large-images extra) streams large images")
    from edgehema.exceptions import InputFileError
    from edgehema.smear.image_io import open_rows, png_interlaced

    img = pyvips.Image.black(400, 300, bands=3) + 200
    img.pngsave(str(tmp_path / "i.png"), interlace=True)
    img.pngsave(str(tmp_path / "p.png"), interlace=False)
    assert png_interlaced(tmp_path / "i.png") and not png_interlaced(tmp_path / "p.png")
    monkeypatch.setenv("EDGEHEMA_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(InputFileError, match="interlaced"):
        open_rows(tmp_path / "i.png")
    assert open_rows(tmp_path / "p.png").height == 300  # streamed


# 9 ---------------------------------------------------------------------------------------------
def test_train_prints_its_plan_and_estimate_and_tiny_is_quick(tmp_path):
    pytest.importorskip("torch", reason="edgehema train needs the export extra (torch)")
    import time

    from export.training.simulated import simulate_instrument

    files, ref, _ = simulate_instrument("optical-b", tmp_path / "d", 5, 20_000, seed=3)
    t0 = time.perf_counter()
    proc = run("train", str(tmp_path / "d"), "--reference", str(ref), "--out", str(tmp_path / "m"), "--scale", "tiny",
               "--folds", "2", timeout=600)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = next(line for line in proc.stdout.splitlines() if line.startswith("plan:"))
    assert "2-fold cross-validation + the final model = 3 fit(s)" in plan and "estimated" in plan
    # Progress lines carry the share of the whole plan and the time left.
    assert "plan 100 %" in proc.stderr and "left" in proc.stderr
    wrote = next(line for line in proc.stdout.splitlines() if line.startswith("wrote "))
    assert "estimated" in wrote
    # Tiny is quick by its size, not by a clock (a loaded machine is slow at anything): few steps of
    # small bags per fit, so that it finishes within a minute on 2 idle cores (measured 16 s on
    # the 2-core machine of 2026-12-07; 139 s beside a training run using both cores).
    import re

    fits, steps, bag = (int(v.replace(",", "")) for v in
                        re.search(r"= (\d+) fit\(s\) x ([\d,]+) steps \(bags of ([\d,]+) events\)", plan).groups())
    assert fits == 3 and steps * bag <= 200 * 2048, plan
    assert took < 900, took  # only a hang fails here


# README ----------------------------------------------------------------------------------------
def test_species_counts_agree_between_readme_help_and_errors():
    from pathlib import Path

    from edgehema.simulator.presets import SPECIES, TRAINED_SPECIES
    from edgehema.species import known_species

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"one of {len(known_species())} species" in readme
    assert f"presets for {len(SPECIES)} of them" in readme and f"trained on {len(TRAINED_SPECIES)}" in readme
    simulate_help = " ".join(run("simulate", "--help").stdout.split())
    assert f"one of {len(SPECIES)}:" in simulate_help and all(s in simulate_help for s in SPECIES)
    classify_help = " ".join(run("classify", "--help").stdout.split())
    assert f"one of {len(known_species())}" in classify_help and f"trained on {len(TRAINED_SPECIES)}" in classify_help
    assert f"the simulator's {len(SPECIES)} presets" in run("simulate", "--species", "x", "--out", "x.csv").stderr
    assert f"the {len(known_species())} species" in run("classify", "x.csv", "--species", "x").stderr
