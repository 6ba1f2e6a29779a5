"""A host restarted mid-sample (kill -9, SIGTERM, a lost link): the sample it had open is joined to
the instrument's continuation or reported once, flagged with the true reason; a result whose sample
id the instrument never sent does not reach the LIS (issue 32 item 2)."""

from __future__ import annotations

import sqlite3

import pytest

from edgehema.model.classifier import Classifier
from edgehema.simulator.emulator import InstrumentEmulator
from edgehema.stream.journal import Journal
from edgehema.stream.runner import StreamConfig, StreamRunner, replay_bytes, restore_open
from edgehema.stream.session import SampleResumed, WireSession


@pytest.fixture(scope="module")
def clf():
    return Classifier()


def _cut_archive(path, events=20_000, keep_frames=12):
    """What the stream archives of sample 1 before the host dies: HELLO, SAMPLE_BEGIN, a few EVENTS."""
    emu = InstrumentEmulator("cat", samples=1, events=events, seed=4)
    chunks = list(emu.chunks())
    path.write_bytes(b"".join(c.data for c in chunks[:2 + keep_frames]))
    return emu, chunks


def test_restore_open_gives_the_sample_with_its_metadata_and_events(tmp_path, clf):
    emu, _ = _cut_archive(tmp_path / "a.ehw")
    a = restore_open((tmp_path / "a.ehw").read_bytes(), clf)
    assert a is not None
    s = a.sample
    assert s.sample_id == emu.truths[0]["sample_id"] and s.species == "cat" and s.tag == 1
    assert s.received == sum(len(e) for e in a.events) > 0 and s.frames == []


def test_the_continuation_joins_the_restored_sample_and_counts_every_event(tmp_path, clf):
    emu, chunks = _cut_archive(tmp_path / "a.ehw")
    a = restore_open((tmp_path / "a.ehw").read_bytes(), clf)
    held = {(a.sample.instrument_id, a.sample.tag): a.sample}
    session = WireSession(resume=lambda inst, tag, feats: held.pop((inst, tag), None))
    # The new connection: the instrument's HELLO, then the frames after the cut, no SAMPLE_BEGIN.
    items = list(session.feed(emu.hello() + b"".join(c.data for c in chunks[14:])))
    assert any(isinstance(i, SampleResumed) for i in items)
    closed = [i for i in items if type(i).__name__ == "SampleClosed"]
    assert len(closed) == 1 and closed[0].sample is a.sample and closed[0].complete
    # Nothing lost between the two (the cut fell between frames): every event, once.
    assert a.sample.received == 20_000 and "event_index_gap" not in a.sample.flags


def test_a_sample_the_instrument_does_not_carry_on_is_reported_once(tmp_path, clf):
    archive = tmp_path / "archive"
    archive.mkdir()
    emu, _ = _cut_archive(archive / "s.ehw")
    journal = Journal(tmp_path / "j.sqlite")
    journal.open_sample(1, emu.truths[0]["sample_id"], "EMU-0001", str(archive / "s.ehw"))
    journal.close()
    runs = []
    for _ in range(3):  # the instrument is off: port refused
        out, logs = [], []
        cfg = StreamConfig(port="socket://127.0.0.1:9", journal=tmp_path / "j.sqlite", archive_dir=archive,
                           reconnect=False)
        with pytest.raises(Exception):
            StreamRunner(cfg, out.append, log=logs.append, classifier=clf).run()
        runs.append(out)
    assert [len(r) for r in runs] == [1, 0, 0], logs
    r = runs[0][0]
    assert r["sample_id"] == emu.truths[0]["sample_id"] and r["species"] == "cat"
    assert {"interrupted", "incomplete"} <= set(r["flags"]) and r["complete"] is False
    assert "crash, kill or power loss" in r["flag_details"]["interrupted"]
    # The archived events are all counted.
    assert r["events"]["total"] == replay_bytes((archive / "s.ehw").read_bytes(), clf)[0]["events"]["total"]
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        assert [row[0] for row in db.execute("SELECT status FROM samples")] == ["incomplete"]


def test_a_result_without_an_instrument_sample_id_is_held_for_review_not_sent(tmp_path):
    pytest.importorskip("hl7apy", reason="hl7apy (test extra) validates the HL7 messages")
    import subprocess
    import sys

    from edgehema.lis.outbox import Outbox
    from edgehema.sinks.lis_sink import LisSink
    from tests.test_lis import FAST, Peer, result

    peer = Peer()
    db = tmp_path / "o.sqlite"
    try:
        logs = []
        sink = LisSink(peer.url, db, log=logs.append, wait_s=5, **FAST)
        orphan = result(3, sample_id="tag-3", sample_id_source="host", flags=["missing_sample_begin"])
        sink.write(orphan)
        sink.write(dict(orphan))  # emitted again after a restart: held once
        sink.write(result(4, sample_id_source="instrument"))
        sink.close()
        assert [s for _c, s in peer.received] == ["S-0004"]
        assert any("held for review" in line for line in logs)
        box = Outbox(db)
        held = box.held()
        assert len(held) == 1 and held[0]["sample_id"] == "tag-3"
        box.close()
        listed = subprocess.run([sys.executable, "-m", "edgehema", "outbox", "--db", str(db), "--held"],
                                capture_output=True, text=True, timeout=60)
        assert "tag-3" in listed.stdout and "1 result(s) held for review" in listed.stdout
        # After review, released under the right accession: it goes, flagged.
        rel = subprocess.run([sys.executable, "-m", "edgehema", "outbox", "--db", str(db), "--release",
                              str(held[0]["id"]), "--sample-id", "ACC-77"], capture_output=True, text=True, timeout=60)
        assert rel.returncode == 0, rel.stderr
        sent = subprocess.run([sys.executable, "-m", "edgehema", "outbox", "--db", str(db), "--send", peer.url,
                               "--wait", "10"], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert [s for _c, s in peer.received] == ["S-0004", "ACC-77"]
        again = subprocess.run([sys.executable, "-m", "edgehema", "outbox", "--db", str(db), "--release",
                                str(held[0]["id"]), "--sample-id", "ACC-77"], capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "released already" in again.stderr
    finally:
        peer.close()
