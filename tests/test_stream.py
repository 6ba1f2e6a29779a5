"""Streaming end to end: TCP and pty, the fault matrix, exact replay, kill -9 recovery."""

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from edgehema.model.classifier import Classifier
from edgehema.simulator.emulator import InstrumentEmulator, parse_faults, serve_tcp, write_pty
from edgehema.stream.runner import StreamConfig, StreamRunner, replay_bytes


@pytest.fixture(scope="module")
def clf():
    return Classifier()


def start_tcp_instrument(emu, rate=0.0):
    box, ready = {}, threading.Event()

    def on_ready(port):
        box["port"] = port
        ready.set()

    t = threading.Thread(target=serve_tcp, args=(emu, 0, rate), kwargs={"ready": on_ready, "accept_timeout": 20},
                         daemon=True)
    t.start()
    assert ready.wait(10)
    return t, f"socket://127.0.0.1:{box['port']}"


def run_stream(tmp_path, port, clf, samples, **kw):
    results, logs = [], []
    cfg = StreamConfig(port=port, journal=tmp_path / "j.sqlite", archive_dir=tmp_path / "archive",
                       max_samples=samples, idle_exit=4.0, reconnect_delay=0.1, **kw)
    runner = StreamRunner(cfg, results.append, log=logs.append, classifier=clf)
    runner.run()
    return results, logs, runner


def test_tcp_end_to_end_counts_and_exact_replay(tmp_path, clf):
    emu = InstrumentEmulator("dog", samples=3, events=30_000, seed=5)
    t, port = start_tcp_instrument(emu)
    results, logs, runner = run_stream(tmp_path, port, clf, 3)
    t.join(5)
    assert [r["sample_id"] for r in results] == [x["sample_id"] for x in emu.truths]
    for r, truth in zip(results, emu.truths):
        assert r["complete"] is True and r["flags"] == [] or set(r["flags"]) <= {"platelet_clumps_suspected"}
        assert r["events"]["total"] == truth["events"]["total"] == 30_000
        assert abs(r["cells"]["rbc"] / truth["cells"]["rbc"] - 1) < 0.02
        assert abs(r["cells"]["plt"] / truth["cells"]["plt"] - 1) < 0.12
        assert r["concentration"]["rbc_per_uL"] == pytest.approx(truth["concentration"]["rbc_per_uL"], rel=0.04)
    # Every result is in the journal, committed.
    db = sqlite3.connect(tmp_path / "j.sqlite")
    assert [row[0] for row in db.execute("SELECT status FROM samples ORDER BY id")] == ["complete"] * 3
    # The archive reproduces each result exactly.
    for r, (archive,) in zip(results, db.execute("SELECT archive FROM samples ORDER BY id")):
        again = replay_bytes(open(archive, "rb").read(), clf)
        assert len(again) == 1
        a, b = dict(again[0]), dict(r)
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    # Results come out fast after SAMPLE_END (generous bound for a loaded CI machine).
    assert max(runner.stats.result_latency_ms) < 500


def test_pty_end_to_end(tmp_path, clf):
    emu = InstrumentEmulator("cat", samples=2, events=20_000, seed=6)
    box, ready, go = {}, threading.Event(), threading.Event()
    t = threading.Thread(target=write_pty, args=(emu, 0.0),
                         kwargs={"ready": lambda n: (box.setdefault("port", n), ready.set()), "start": go}, daemon=True)
    t.start()
    assert ready.wait(10)
    results, logs = [], []

    def log(line):
        logs.append(line)
        if line.startswith("connected"):
            go.set()

    cfg = StreamConfig(port=box["port"], journal=tmp_path / "j.sqlite", archive_dir=tmp_path / "a", max_samples=2,
                       idle_exit=4.0, reconnect=False)
    StreamRunner(cfg, results.append, log=log, classifier=clf).run()
    assert [r["sample_id"] for r in results] == [x["sample_id"] for x in emu.truths]
    assert all(r["events"]["total"] == 20_000 for r in results)


EXPECTED = {
    "bitflip": "corrupted_frames",
    "drop": "sequence_gap",
    "truncate": "corrupted_frames",
    "total": "event_total_mismatch",
    "disconnect": "incomplete",
    "reboot": "incomplete",
}


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_fault_matrix(tmp_path, clf, fault):
    """Sample 2 of 3 carries the fault: it is flagged and never clean; samples 1 and 3 are clean."""
    emu = InstrumentEmulator("human", samples=3, events=12_000, seed=7, faults=parse_faults([f"{fault}@2"]))
    t, port = start_tcp_instrument(emu)
    results, logs, _ = run_stream(tmp_path, port, clf, 3)
    t.join(5)
    by_id = {r["sample_id"]: r for r in results}
    ids = [x["sample_id"] for x in emu.truths]
    assert set(by_id) == set(ids), logs
    bad = by_id[ids[1]]
    assert EXPECTED[fault] in bad["flags"], (bad["flags"], logs)
    assert bad["complete"] is False
    for clean in (by_id[ids[0]], by_id[ids[2]]):
        assert clean["complete"] is True, (clean["flags"], logs)
        assert not set(clean["flags"]) & set(EXPECTED.values())


def test_kill_9_recovery(tmp_path):
    """kill -9 mid-sample: completed results survive, the interrupted sample is reported incomplete at restart."""
    emu = InstrumentEmulator("dog", samples=3, events=40_000, seed=8)
    # 1.6 s per sample: room for a loaded machine to see sample 2 open and kill the host before it ends.
    t, port = start_tcp_instrument(emu, rate=25_000.0)
    journal, archive = tmp_path / "j.sqlite", tmp_path / "archive"
    cmd = [sys.executable, "-m", "edgehema", "stream", "--port", port, "--journal", str(journal), "--archive", str(archive),
           "--no-reconnect", "--output", str(tmp_path / "out1.jsonl")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    status = []
    while time.time() < deadline:
        time.sleep(0.1)
        if journal.exists():
            try:
                with sqlite3.connect(journal) as db:
                    status = [r[0] for r in db.execute("SELECT status FROM samples ORDER BY id")]
            except sqlite3.Error:
                continue
            if status[:1] == ["complete"] and len(status) >= 2 and status[1] == "open":
                break
    assert status[:2] == ["complete", "open"], status
    time.sleep(0.2)  # some events of sample 2 archived
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t.join(10)
    first = [json.loads(line) for line in (tmp_path / "out1.jsonl").read_text().splitlines()]
    assert len(first) == 1 and first[0]["complete"] is True
    # Restart: nothing to connect to any more; the interrupted sample is recovered from its archive.
    proc = subprocess.run(cmd[:-2] + ["--output", str(tmp_path / "out2.jsonl"), "--idle-exit", "1"],
                          capture_output=True, text=True, timeout=60)
    after = [json.loads(line) for line in (tmp_path / "out2.jsonl").read_text().splitlines()]
    # The instrument carried on while the host was down. On restart the host asks it to introduce
    # itself (HELLO_REQUEST), it answers, and nothing it sends after that is dropped. The rest of
    # sample 2 (no SAMPLE_BEGIN: that went to the dead host) is joined to what the archive holds of
    # it: one result, under its own sample id and species, flagged (issue 32 item 2: it used to go out
    # as a second result "tag-2" with no species and no concentrations). Sample 3 is counted normally.
    assert len(after) == 2, (proc.stderr, [r["sample_id"] for r in after])
    r = after[0]
    assert r["sample_id"] == emu.truths[1]["sample_id"] and r["species"] == "dog" and r["complete"] is False
    assert r["sample_id_source"] == "instrument"
    assert "resumed" in r["flags"] and "event_index_gap" in r["flags"], r["flags"]
    assert "missing_sample_begin" not in r["flags"]
    assert r["concentration"]["rbc_per_uL"] is not None  # its SAMPLE_END (volume) arrived with the rest
    # Events the instrument sent while no host listened are lost on the link, and said so; none twice.
    assert 0.5 * 40_000 < r["events"]["total"] < 40_000
    assert after[1]["sample_id"] == emu.truths[2]["sample_id"] and after[1]["events"]["total"] == 40_000
    assert "before HELLO" not in proc.stderr
    assert not any(x["sample_id"].startswith("tag-") for x in first + after)
    with sqlite3.connect(journal) as db:
        rows = [row[0] for row in db.execute("SELECT status FROM samples ORDER BY id")]
        assert rows == ["complete", "complete", "complete"], rows
        # Every stored result was delivered.
        assert db.execute("SELECT count(*) FROM samples WHERE emitted_at IS NULL").fetchone()[0] == 0


def test_config_file_and_bad_port(tmp_path):
    cfg = tmp_path / "edgehema.toml"
    cfg.write_text('[stream]\nport = "socket://127.0.0.1:9"\nbaud = 115200\nidle_exit = 0.5\n')
    proc = subprocess.run([sys.executable, "-m", "edgehema", "stream", "--config", str(cfg), "--no-reconnect",
                           "--journal", str(tmp_path / "j.sqlite"), "--archive", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("edgehema: error: socket://127.0.0.1:9: cannot open the port")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_exits_cleanly_and_reports_the_open_sample(tmp_path, sig):
    """Ctrl-C, and SIGTERM (systemd's stop), stop cleanly and leave the open sample open (journal and
    archive) for the next start, which joins the instrument's continuation to it: one result under
    its own id, flagged with the true reason, never a second one (issue 32 item 2)."""
    emu = InstrumentEmulator("human", samples=2, events=60_000, seed=9)
    t, port = start_tcp_instrument(emu, rate=30_000.0)
    journal = tmp_path / "j.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "edgehema", "stream", "--port", port, "--journal", str(journal),
                             "--archive", str(tmp_path / "a"), "--no-reconnect"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        time.sleep(0.1)
        if journal.exists():
            try:
                with sqlite3.connect(journal) as db:
                    # Interrupt while a sample is being received (2 s of events at this rate each).
                    if db.execute("SELECT count(*) FROM samples WHERE status = 'open'").fetchone()[0]:
                        break
            except sqlite3.Error:
                pass
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "model edgehema-reference-tflite-int8 2.0.0 on tflite" in err  # which model counts, said once
    results = [json.loads(line) for line in out.splitlines()]
    assert all(r["complete"] for r in results), [r["flags"] for r in results]
    assert "left open" in err
    with sqlite3.connect(journal) as db:
        assert [row[0] for row in db.execute("SELECT status FROM samples")][-1] == "open"
    again = []
    for _ in range(2):  # the instrument waits for its host and carries on; the second start gets nothing
        run = subprocess.run([sys.executable, "-m", "edgehema", "stream", "--port", port, "--journal", str(journal),
                              "--archive", str(tmp_path / "a"), "--no-reconnect", "--idle-exit", "1"],
                             capture_output=True, text=True, timeout=60)
        assert "Traceback" not in run.stderr
        again.append([json.loads(line) for line in run.stdout.splitlines()])
    t.join(30)
    ids = [x["sample_id"] for x in emu.truths]
    assert [r["sample_id"] for r in results + again[0]] == ids and again[1] == [], again
    r = again[0][0]
    assert r["complete"] is False and "resumed" in r["flags"] and "stopped (signal)" in r["flag_details"]["resumed"]
    assert r["events"]["total"] <= 60_000 and again[0][1]["events"]["total"] == 60_000
    with sqlite3.connect(journal) as db:
        assert "open" not in [row[0] for row in db.execute("SELECT status FROM samples")]
