"""Fleet re-analysis on Dask (issue 14): the same results as classify and replay, sample for sample,
whatever the number of workers; a killed worker or driver loses nothing and counts nothing twice;
the rollout report between reference and reference-int8 shows their differences."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("dask.distributed", reason="the fleet extra (dask[distributed]) is not installed")
pytest.importorskip("pyarrow", reason="the fleet extra (pyarrow) is not installed")

from edgehema import write_sample  # noqa: E402
from edgehema.simulator.emulator import InstrumentEmulator, write_file  # noqa: E402
from edgehema.fleet import FleetJob  # noqa: E402
from edgehema.fleet import report as R  # noqa: E402
from edgehema.fleet.run import read_results, reanalyze  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402

NEW, OLD = "reference-int8", "reference"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgehema", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, COLUMNS="200"))


def make_archive(root: Path, n_files: int = 10, events: int = 20_000) -> Path:
    """Event files of three species in two device folders, a stream archive, a bad file, a sidecar."""
    species = ("dog", "cat", "human")
    for i in range(n_files):
        folder = root / f"analyzer-{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        write_sample(SampleSimulator(species[i % 3], seed=900 + i).generate(events).sample, folder / f"s{i:02d}.csv")
    write_file(InstrumentEmulator("horse", 2, 8_000, 5), str(root / "analyzer-1" / "run.ehw"))
    (root / "analyzer-0" / "broken.csv").write_text("garbage\n1,2\n")
    (root / "analyzer-0" / "notes.json").write_text("{}")  # not a sample: not an input
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("fleet") / "archive")


@pytest.fixture(scope="module")
def two_worker_run(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "results"
    proc = run("reanalyze", archive, "--model", NEW, "--baseline", OLD, "--workers", 2, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def test_results_are_classify_and_replay_sample_for_sample(archive, two_worker_run):
    out, proc = two_worker_run
    assert "12 inputs: 12 analysed now" in proc.stdout and "1 input(s) failed" in proc.stdout, proc.stdout
    assert "Dask dashboard: http" in proc.stderr
    rows = read_results(out).to_pylist()
    files = sorted(str(p.resolve()) for p in archive.rglob("s*.csv"))
    for model, role in ((NEW, "model"), (OLD, "baseline")):
        c = run("classify", *files, "--json", "--model", model)
        assert c.returncode == 0, c.stderr
        want = {r["source"]: _without_timing(r) for r in map(json.loads, c.stdout.splitlines())}
        got = {r["input"]: _without_timing(json.loads(r["result_json"])) for r in rows if r["role"] == role and r["input"].endswith(".csv") and not r["error"]}
        assert got == want
        rp = run("replay", archive / "analyzer-1" / "run.ehw", "--model", model)
        assert rp.returncode == 0, rp.stderr
        want = [_without_timing(json.loads(line)) for line in rp.stdout.splitlines()]
        got = [_without_timing(json.loads(r["result_json"])) for r in rows if r["role"] == role and r["input"].endswith(".ehw")]
        assert got == want and len(got) == 2
    # The broken file: one row, the input's, with its one error line; the sidecar is no input.
    [bad] = [r for r in rows if r["input"].endswith("broken.csv")]
    assert bad["role"] == "input" and "header matches no instrument profile" in bad["error"]
    assert not any(r["input"].endswith("notes.json") for r in rows)
    # Partitioned by date and device: the archive's device is the instrument's id, the files' their own.
    parts = {(p.parent.parent.name, p.parent.name) for p in out.rglob("part-*.parquet")}
    assert {d for _, d in parts} >= {"device=EMU-0001"} and all(d.startswith("date=") for d, _ in parts)


def test_one_worker_gives_the_same_results(archive, two_worker_run, tmp_path):
    out2, _ = two_worker_run
    summary = reanalyze([str(archive)], FleetJob(NEW, OLD), tmp_path / "one", workers=1, batch_size=5)
    assert summary.workers == 1 and summary.analysed == 12
    one = read_results(tmp_path / "one").to_pylist()
    two = read_results(out2).to_pylist()
    key = lambda r: (r["input"], r["sample_index"], r["role"])  # noqa: E731
    assert [key(r) for r in one] == [key(r) for r in two]
    assert [_without_timing(json.loads(r["result_json"])) if r["result_json"] else r["error"] for r in one] == \
        [_without_timing(json.loads(r["result_json"])) if r["result_json"] else r["error"] for r in two]


def test_a_rerun_skips_what_is_done_and_other_models_are_refused(archive, two_worker_run):
    out, _ = two_worker_run
    before = read_results(out).num_rows
    proc = run("reanalyze", archive, "--model", NEW, "--baseline", OLD, "--out", out)
    assert proc.returncode == 0 and "0 analysed now" in proc.stdout and "12 already done" in proc.stdout, proc.stdout
    assert read_results(out).num_rows == before
    proc = run("reanalyze", archive, "--model", "reference-tflite-int8", "--out", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "holds results of another analysis" in lines[0]
    proc = run("reanalyze", archive / "nothing-*.csv", "--model", NEW, "--out", out.parent / "x")
    assert proc.returncode == 1 and "matches no file" in proc.stderr


def _wait_for_batches(out: Path, n: int, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if (out / "_done").is_dir() and len(list((out / "_done").glob("*.json"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} batches not done in {seconds} s")


def _exactly_once(rows: list[dict], n_inputs: int) -> None:
    keys = [(r["input_key"], r["sample_index"], r["role"]) for r in rows]
    assert len(keys) == len(set(keys)), "a sample counted twice"
    assert len({r["input_key"] for r in rows}) == n_inputs, "an input lost"


def test_a_driver_killed_mid_run_loses_nothing_and_counts_nothing_twice(tmp_path):
    archive = make_archive(tmp_path / "archive", n_files=16, events=30_000)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "edgehema", "reanalyze", str(archive), "--model", NEW, "--workers", "2", "--batch", "1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_batches(out, 3)
    assert proc.poll() is None, "the run ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done_before = len(list((out / "_done").glob("*.json")))
    assert 3 <= done_before < 18, "the kill did not land mid-run"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{done_before} already done" in again.stdout or "already done" in again.stdout
    rows = read_results(out).to_pylist()
    _exactly_once(rows, 18)
    # Nothing half-written stays behind.
    assert not list(out.rglob("*.tmp"))


def test_a_worker_killed_mid_run_loses_nothing(tmp_path):
    from dask.distributed import Client, LocalCluster

    archive = make_archive(tmp_path / "archive", n_files=16, events=30_000)
    out = tmp_path / "results"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("summary", reanalyze(
            [str(archive)], FleetJob(NEW), out, cluster=cluster.scheduler_address, batch_size=1)))
        t.start()
        _wait_for_batches(out, 1)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        t.join(240)
    summary = box["summary"]
    assert summary.analysed + len(summary.lost_batches) == 18 and not summary.lost_batches, summary
    rows = read_results(out).to_pylist()
    _exactly_once(rows, 18)
    # The same counts as a run nobody disturbed.
    clean = reanalyze([str(archive)], FleetJob(NEW), tmp_path / "clean", workers=1)
    assert clean.analysed == 18
    a = {(r["input"], r["sample_index"]): r["result_json"] and _without_timing(json.loads(r["result_json"])) for r in rows}
    b = {(r["input"], r["sample_index"]): r["result_json"] and _without_timing(json.loads(r["result_json"]))
         for r in read_results(tmp_path / "clean").to_pylist()}
    assert a == b


def test_rollout_report_reference_int8_against_reference(two_worker_run, tmp_path):
    out, _ = two_worker_run
    proc = run("rollout-report", out, "--html", tmp_path / "r.html", "--json", tmp_path / "r.json",
               "--max", "bias_plt=100", "--max", "loa_plt=100", "--max", "flag_change_pct=100", "--max", "crossing_pct=100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: PASS" in proc.stdout and "species dog" in proc.stdout and "device EMU-0001" in proc.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    total = rep["groups"][0]
    assert total["group"] == "all" and total["samples"] == 12
    # int8 and float differ, a little: the report shows it (not all zero), within a percent.
    spread = [abs(total[a]["loa"][i]) for a in ("RBC", "PLT") for i in (0, 1)]
    assert max(spread) > 0 and max(spread) < 5
    assert rep["errors_with_both"] == 1 and rep["new_only_errors"] == []
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") == 3 and "Verdict: PASS" in page
    # A user's threshold the difference exceeds: FAIL, exit status 1, the reason named.
    proc = run("rollout-report", out, "--max", "loa_plt=0.0001")
    assert proc.returncode == 1 and "verdict: FAIL" in proc.stdout and "PLT limits of agreement" in proc.stdout


def _row(key, role, plt, retic=1.0, flags=(), species="dog", device="a", error=None):
    return {"input_key": key, "input": f"/x/{key}.csv", "sample_index": 0, "role": role, "error": error,
            "sample_id": key, "species": species, "device": device, "rbc_per_ul": 7e6, "plt_per_ul": plt,
            "retic_percent": retic, "flags": list(flags), "model_name": role, "model_version": "1", "model_sha256": "0" * 64}


def test_report_finds_crossings_flag_changes_and_new_only_failures():
    rows = [_row("a", "model", 149e3), _row("a", "baseline", 151e3),          # crosses 150
            _row("b", "model", 300e3, flags=["lipemia"]), _row("b", "baseline", 300e3),
            _row("c", "model", 40e3, retic=2.6), _row("c", "baseline", 40.2e3, retic=2.4),  # RET crosses 2.5
            _row("d", "model", None, error="d: boom"), _row("d", "baseline", 200e3)]
    rep = R.build(rows)
    assert {(c["sample_id"], c["analyte"]) for c in rep.crossings} == {("a", "plt_per_ul"), ("c", "retic_percent")}
    assert [(f["sample_id"], f["gained"]) for f in rep.flag_changes] == [("b", ["lipemia"])]
    assert [e["input_key"] for e in rep.new_only_errors] == ["d"]
    assert not rep.passed and any("fail with the new model only" in f for f in rep.verdict_failures)
    a = rep.total.agreement("plt_per_ul", True)
    assert a.n == 3 and a.bias == pytest.approx(((149 - 151) / 150 * 100 + 0 + (40 - 40.2) / 40.1 * 100) / 3)


def test_fsspec_urls_are_inputs(tmp_path):
    """Inputs by URL go through fsspec (here its in-memory file system, shared with an in-process
    cluster; s3://, gs:// or http:// work the same where their driver is installed)."""
    import fsspec
    from dask.distributed import Client, LocalCluster

    fs = fsspec.filesystem("memory")
    local = make_archive(tmp_path / "archive", n_files=3, events=10_000)
    for f in sorted(local.rglob("*")):
        if f.is_file():
            fs.pipe(f"/fleet-test/{f.relative_to(local)}", f.read_bytes())
    try:
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster):
            summary = reanalyze(["memory://fleet-test/analyzer-0/*.csv", "memory://fleet-test/analyzer-1"],
                                FleetJob(NEW), tmp_path / "out", cluster=cluster.scheduler_address)
    finally:
        fs.rm("/fleet-test", recursive=True)
    rows = read_results(tmp_path / "out").to_pylist()
    assert summary.inputs == 5 and {r["input"].split("/")[-1] for r in rows} == {"s00.csv", "s01.csv", "s02.csv", "broken.csv", "run.ehw"}
    want = {Path(p).name: p for p in map(str, local.rglob("s*.csv"))}
    c = run("classify", *sorted(want.values()), "--json", "--model", NEW)
    by_name = {Path(r["source"]).name: r["cells"] for r in map(json.loads, c.stdout.splitlines())}
    for r in rows:
        if r["input"].endswith(".csv") and not r["error"]:
            result = json.loads(r["result_json"])
            # Read with its sidecar (species, dilution) as the local file was; named by its URL.
            assert result["cells"] == by_name[r["input"].split("/")[-1]] and result["source"] == r["input"]


def test_a_cluster_that_cannot_start_is_one_error(tmp_path, monkeypatch):
    import dask.distributed

    from edgehema.exceptions import EdgehemaError

    def broken(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(dask.distributed, "LocalCluster", broken)
    archive = make_archive(tmp_path / "archive", n_files=2, events=5_000)
    with pytest.raises(EdgehemaError, match="cannot start a local Dask cluster of 2 worker.*Nanny failed"):
        reanalyze([str(archive)], FleetJob(NEW), tmp_path / "out", workers=2)
