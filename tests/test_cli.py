"""The command line as a user meets it: help, version, simulate, inspect, one-line errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import flowio
import numpy as np
import pytest

from edgehema import __version__, read_sample

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None, timeout=120):
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "edgehema", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


def test_version_and_help():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgehema {__version__}"
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("simulate", "inspect", "profiles"):
        assert command in proc.stdout
    for command in ("simulate", "inspect", "profiles"):
        sub = run(command, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout


def test_simulate_acceptance_command(tmp_path):
    """The issue's acceptance: cat, 150k events, seed 7, CSV + truth in under 3 s; FCS reads back in flowio."""
    t0 = time.perf_counter()
    proc = run("simulate", "--species", "cat", "--events", "150000", "--seed", "7", "--out", "s.csv", "--truth", "t.json",
               cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    truth = json.loads((tmp_path / "t.json").read_text())
    assert truth["species"] == "cat" and truth["events"]["total"] == 150_000
    sample = read_sample(tmp_path / "s.csv")
    assert sample.n_events == 150_000 and sample.info.species == "cat"
    assert sample.info.sample_id == truth["sample_id"]
    # Generous bound for a loaded CI machine; the benchmark measures the real figure.
    assert elapsed < 10, f"simulate took {elapsed:.1f} s"

    proc = run("simulate", "--species", "cat", "--events", "150000", "--seed", "7", "--out", "s.fcs", "--format", "fcs",
               "--truth", "t2.json", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    flow = flowio.FlowData(str(tmp_path / "s.fcs"))
    assert flow.event_count == 150_000 and flow.channel_count == 11
    np.testing.assert_array_equal(np.asarray(flow.as_array(preprocess=False), dtype=np.float32), sample.events)
    assert (tmp_path / "t2.json").read_text() == (tmp_path / "t.json").read_text()


def test_simulate_many_samples_and_labels(tmp_path):
    proc = run("simulate", "--species", "dog", "--pathology", "thrombocytopenia", "--events", "5000", "--samples", "3",
               "--seed", "1", "--out", str(tmp_path / "set"))
    assert proc.returncode == 0, proc.stderr
    truths = sorted((tmp_path / "set").glob("*.truth.json"))
    assert len(truths) == 3 and len(list((tmp_path / "set").glob("*.csv"))) == 3
    ids = {json.loads(p.read_text())["sample_id"] for p in truths}
    assert len(ids) == 3
    proc = run("simulate", "--events", "2000", "--out", str(tmp_path / "one.csv"), "--labels", str(tmp_path / "l.csv"), "-q")
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "l.csv").read_text().splitlines()
    assert lines[0] == "class,class_code,n_rbc,n_retic,n_plt" and len(lines) == 2001


def test_inspect_json_and_profiles(tmp_path):
    run("simulate", "--events", "3000", "--out", str(tmp_path / "a.csv"), "-q")
    proc = run("inspect", "--json", str(tmp_path / "a.csv"))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "csv" and info["events"] == 3000 and info["profile"] == "optical-11"
    assert info["metadata"]["dilution"] == 625.0
    proc = run("profiles")
    assert proc.returncode == 0 and "optical-11" in proc.stdout and "sysmex-xn-ret" in proc.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("simulate", "--species", "unicorn", "--out", "x.csv"), "unknown species 'unicorn'"),
        (("inspect", "missing.csv"), "missing.csv: no such file"),
        (("inspect", "--profile", "nope", "x.csv"), "unknown instrument profile 'nope'"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, args, needle):
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgehema: error: ") and needle in lines[0], proc.stderr


def test_bad_csv_one_line_and_other_files_still_described(tmp_path):
    run("simulate", "--events", "1000", "--out", str(tmp_path / "good.csv"), "-q")
    bad = tmp_path / "bad.csv"
    lines = (tmp_path / "good.csv").read_text().splitlines()
    lines[7] = lines[7].replace(",", ",oops", 1)
    bad.write_text("\n".join(lines) + "\n")
    proc = run("inspect", "--json", str(bad), str(tmp_path / "good.csv"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"edgehema: error: {bad}: line 8: non-numeric value 'oops{lines[7].split(',oops')[1].split(',')[0]}' in column fsc_lo_area"
    assert json.loads(proc.stdout)["events"] == 1000


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = readme.split("```")
    setup = [b for b in blocks[1:4:2]]
    assert len(setup) == 2, "the README opens with two set-up command blocks"
    test_command = setup[1].strip().splitlines()[-1].strip()
    assert "pytest" in test_command
    assert test_command in ci, "CI must run the README's test command"
