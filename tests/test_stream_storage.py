"""A full disk on the device: results are held in memory and not acknowledged until stored, nothing is
lost or reported as a link fault, start-up works on a full disk, and undelivered results are emitted."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgehema.model.classifier import Classifier
from edgehema.exceptions import StorageFullError
from edgehema.stream.journal import Journal
from edgehema.stream.runner import StreamConfig, StreamRunner

HERE = Path(__file__).resolve().parent


def _namespaces_work() -> str | None:
    if shutil.which("unshare") is None:
        return "util-linux 'unshare' is not installed"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode:
        return f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()[:120]}"
    return None


def test_full_disk_mid_stream_on_a_real_small_filesystem(tmp_path):
    why = _namespaces_work()
    if why:
        pytest.skip(why + " (the logic is also tested without it: test_storage_full_logic)")
    proc = subprocess.run(["unshare", "-rm", sys.executable, str(HERE / "full_disk_scenario.py"), str(tmp_path / "disk")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    logs = "\n".join(out["logs"])
    # Every sample reported once, in order, although the disk was full for two of them.
    assert [r["sample_id"] for r in out["results"]] == out["truth_ids"], logs
    assert out["held_max"] >= 2 and out["freed_at_emit"] == 1
    assert "storage full" in logs and "link lost" not in logs and "storage available again" in logs
    # The two samples that came while the disk was full lost part of their raw archive (said so);
    # their counts are whole.
    flagged = [r for r in out["results"] if "archive_incomplete" in r["flags"]]
    assert len(flagged) >= 1 and all(r["events"] == 15_000 for r in out["results"])
    # Acknowledged only once stored: all four, in order, the held ones late.
    assert out["acks"] == [1, 2, 3, 4]
    assert [r[0] for r in out["rows"]] == [1, 2, 3, 4] and all(r[2] for r in out["rows"]), out["rows"]
    # Restart on a full disk: start-up works, the undelivered result is emitted, the interrupted
    # sample is reported and stored (the journal's reserve takes it: not written out unstored, so
    # never emitted again), one error line (the instrument is gone), no traceback.
    restart = out["restart"]
    assert restart["error"] and "cannot open the port" in restart["error"] and "Traceback" not in restart["error"]
    ids = [r["sample_id"] for r in restart["results"]]
    assert ids == [out["truth_ids"][3], "dog-x"], restart
    assert "interrupted" in restart["results"][1]["flags"] and "not_stored" not in restart["results"][1]["flags"]
    assert any("reserve released" in line for line in restart["logs"])


class FlakyJournal(Journal):
    """A journal whose writes fail while ``full`` is set, as SQLite does on a full disk."""

    full = False

    def _write(self, sql, args):
        if self.full:
            raise StorageFullError(f"{self.path}: cannot write the result journal: database or disk is full")
        return super()._write(sql, args)


class FakePort:
    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)


def _result(tag):
    return {"sample_id": f"s{tag}", "tag": tag, "complete": True, "flags": []}


def test_storage_full_logic(tmp_path):
    """Held while full (not emitted, not acknowledged), in order; stored, emitted and ACKed once free;
    what can never be stored is emitted flagged not_stored and the run ends with StorageFullError."""
    from edgehema.stream.storage import Held

    emitted = []
    runner = StreamRunner(StreamConfig(port="loop://", journal=tmp_path / "j.sqlite", archive_dir=tmp_path / "a"),
                          emitted.append, classifier=Classifier())
    runner.journal.__class__ = FlakyJournal
    port = runner._port = FakePort()
    held = lambda t: Held(None, _result(t), True, t, f"s{t}", "EMU", "a.ehw", ack=True)  # noqa: E731
    assert runner.store.store(held(1)) is True and [r["tag"] for r in emitted] == [1] and len(port.written) == 1
    FlakyJournal.full = True
    try:
        assert runner.store.store(held(2)) is False and runner.store.store(held(3)) is False
        assert [r["tag"] for r in emitted] == [1] and len(port.written) == 1 and runner.store.full
        FlakyJournal.full = False
        assert runner.store.store(held(4)) is True  # stores 2 and 3 first: order kept
        assert [r["tag"] for r in emitted] == [1, 2, 3, 4] and len(port.written) == 4
        assert runner.store.full is None
        FlakyJournal.full = True
        runner.store.store(held(5))
        with pytest.raises(StorageFullError, match="1 result"):
            runner._finish()
        assert emitted[-1]["tag"] == 5 and "not_stored" in emitted[-1]["flags"] and emitted[-1]["complete"] is False
    finally:
        FlakyJournal.full = False
    rows = Journal(tmp_path / "j.sqlite").unemitted()
    assert rows == []  # 1-4 stored and marked; 5 was never stored


def test_stored_but_undelivered_result_is_emitted_at_start(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    row = j.open_sample(7, "s7", "EMU", "x.ehw")
    j.commit_result(row, _result(7), complete=True)  # stored, then the host died before emitting
    j.close()
    emitted = []
    runner = StreamRunner(StreamConfig(port="loop://", journal=tmp_path / "j.sqlite", archive_dir=tmp_path / "a"),
                          emitted.append, classifier=Classifier())
    runner.recover()
    assert [r["tag"] for r in emitted] == [7]
    assert runner.journal.unemitted() == []
    runner.recover()  # once only
    assert len(emitted) == 1


def test_undelivered_results_come_back_in_the_order_they_were_stored(tmp_path):
    """A sample opened while the disk was full gets its row only when its result is stored, after
    the row of the sample opened next: at the next start both come back in the order stored, which
    is the order the samples were measured, not row order."""
    j = FlakyJournal(tmp_path / "j.sqlite")
    FlakyJournal.full = True
    try:
        with pytest.raises(StorageFullError):
            j.open_sample(1, "s1", "EMU", "1.ehw")  # sample 1 begins: no row
    finally:
        FlakyJournal.full = False
    row2 = j.open_sample(2, "s2", "EMU", "2.ehw")  # disk free again: sample 2 begins, row 1
    row1 = j.commit_result(None, _result(1), complete=True, tag=1, sample_id="s1", archive="1.ehw")  # held 1 stored
    j.commit_result(row2, _result(2), complete=True)
    assert row1 > row2  # the situation: row order is not sample order
    j.close()  # the host dies before emitting either
    j = Journal(tmp_path / "j.sqlite")
    assert [r["tag"] for _, r in j.unemitted()] == [1, 2]
    assert [r["tag"] for r in j.results()] == [1, 2]
    j.close()
    emitted = []
    runner = StreamRunner(StreamConfig(port="loop://", journal=tmp_path / "j.sqlite", archive_dir=tmp_path / "a"),
                          emitted.append, classifier=Classifier())
    runner.recover()
    assert [r["tag"] for r in emitted] == [1, 2]


def test_a_journal_from_before_the_store_order_is_migrated(tmp_path):
    """Journals written before stored_seq existed keep working: their stored rows are ordered by row."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, tag INTEGER NOT NULL, sample_id TEXT NOT NULL,
            instrument_id TEXT, status TEXT NOT NULL, archive TEXT NOT NULL, opened_at TEXT NOT NULL,
            closed_at TEXT, result TEXT, emitted_at TEXT);""")
    for tag in (4, 5):
        db.execute("INSERT INTO samples (tag, sample_id, status, archive, opened_at, closed_at, result) "
                   "VALUES (?, ?, 'complete', 'x', 't', 't', ?)", (tag, f"s{tag}", json.dumps(_result(tag))))
    db.commit()
    db.close()
    j = Journal(path)
    assert [r["tag"] for _, r in j.unemitted()] == [4, 5]
    row = j.open_sample(6, "s6", "EMU", "6.ehw")
    j.commit_result(row, _result(6), complete=True)
    assert [r["tag"] for r in j.results()] == [4, 5, 6]


def _restart_scenario(tmp_path, reserve: int) -> dict:
    why = _namespaces_work()
    if why:
        pytest.skip(why + " (the logic is also tested without it: test_storage_full_logic)")
    proc = subprocess.run(["unshare", "-rm", sys.executable, str(HERE / "full_disk_restart_scenario.py"),
                           str(tmp_path / "disk"), str(reserve)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_full_disk_then_restarts_never_emit_a_result_twice(tmp_path):
    """Issue 32 item 3: archives fill a 4 MB disk, the stream stops holding results it cannot store,
    and starts again three times. Before the fix the sample open at the stop was emitted at every
    start, cut from its archive, with the false reason "crash or kill" (4 starts, 4 copies)."""
    out = _restart_scenario(tmp_path, 1 << 20)
    first, restarts = out["runs"][0], out["runs"][1:]
    logs = "\n".join(first["logs"])
    assert "storage full" in logs and "reserve released" in logs, logs
    # Each sample at most once over the four runs; the restarts emit nothing.
    emitted = [r["sample_id"] for run in out["runs"] for r in run["results"]]
    assert len(emitted) == len(set(emitted)) and emitted == out["truth_ids"][: len(emitted)]
    assert all(run["results"] == [] for run in restarts), restarts
    # The held results were stored whole (the reserve took them), none went out unstored.
    assert not any("not_stored" in r["flags"] for r in first["results"])
    assert first["error"] is None
    rows = out["rows"]
    assert [r["sample_id"] for r in rows] == emitted and all(r["emitted"] for r in rows)
    assert "open" not in [r["status"] for r in rows]
    whole = [r for r in first["results"] if "interrupted" not in r["flags"]]
    assert len(whole) >= 6 and all(r["events"] == 30_000 for r in whole)
    assert [r["events"] for r in rows[: len(whole)]] == [30_000] * len(whole)
    # The one sample open when the stream stopped: said why, truly.
    for r in first["results"]:
        if "interrupted" in r["flags"]:
            assert "full disk" in r["details"]["interrupted"] and "crash" not in r["details"]["interrupted"]


def test_without_a_reserve_a_restart_on_a_full_disk_does_not_emit_again(tmp_path):
    """No room even for the reserve: results go out flagged not_stored once (nothing dropped), and
    a start on the still-full disk does not emit the open sample again from its cut archive."""
    out = _restart_scenario(tmp_path, 0)
    first, restarts = out["runs"][0], out["runs"][1:]
    assert first["error"] and "not_stored" in first["error"]
    assert any("not_stored" in r["flags"] for r in first["results"])
    assert all(run["results"] == [] for run in restarts), restarts
