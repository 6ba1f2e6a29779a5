"""A file classified again with ``--lis`` (after a kill, or just run twice) reaches the LIS once: the
same file, model and settings give the same result key, so only what the LIS has not acknowledged
goes, under the control id it was first given. A deliberate resend goes as a corrected result
(OBR-25 ``C``), and another result of a sample the LIS has is not sent unless asked.

Regression tests for issue 32 item 1 (and item 8's exit status): before the fix the key was the
sha256 of the whole result JSON, which holds the seconds classification took, so every run queued
every result again under new control ids (11 messages for 5 samples after one kill).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("hl7apy", reason="hl7apy (test extra) validates the HL7 messages")

from edgehema.lis.outbox import Outbox, result_key  # noqa: E402
from tests.test_lis import Peer, free_port, validate  # noqa: E402


def _files(tmp_path, n):
    out = tmp_path / "samples"
    target = out if n > 1 else out / "dog-1.csv"  # -o names a folder for several samples, a file for one
    out.mkdir()
    subprocess.run([sys.executable, "-m", "edgehema", "simulate", "--species", "dog", "--samples", str(n),
                    "--seed", "5", "-n", "3000", "-o", str(target)], check=True, capture_output=True, timeout=120)
    return sorted(out.glob("*.csv"))


def _classify(files, url, db, *extra, timeout=180):
    return subprocess.run([sys.executable, "-m", "edgehema", "classify", "--jobs", "1", "--lis", url,
                           "--outbox", str(db), *extra, *map(str, files)], capture_output=True, text=True,
                          timeout=timeout)


def test_result_key_ignores_run_time_and_folder_but_not_counts():
    a = {"sample_id": "S1", "source": "/data/run1/S1.csv", "seconds": 0.31, "cells": {"rbc": 100}}
    b = dict(a, seconds=0.52, source="S1.csv")
    assert result_key(a) == result_key(b)
    assert result_key(a) != result_key(dict(a, cells={"rbc": 101}))
    assert result_key(a) != result_key(dict(a, sample_id="S2"))


def test_rerun_after_kill_sends_each_result_once_under_its_first_control_id(tmp_path):
    files = _files(tmp_path, 5)
    db = tmp_path / "box.sqlite"
    # The LIS answers two messages, then holds the third without answering: classify is killed there.
    peer = Peer(["AA", "AA", "silent"] + ["silent"] * 50)
    proc = subprocess.Popen([sys.executable, "-m", "edgehema", "classify", "--jobs", "1", "--lis",
                             peer.url.replace("0.5", "30"), "--outbox", str(db), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(peer.received) < 3 and time.time() < deadline:
            time.sleep(0.05)
        assert len(peer.received) >= 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        peer.close()
    first = list(peer.received)
    again = Peer(port=peer.port)
    try:
        cli = _classify(files, again.url.replace("0.5", "10"), db)
        assert cli.returncode == 0, cli.stderr
        delivered = first[:2] + again.received  # what the LIS acknowledged, over both runs
        by_sample: dict[str, set[str]] = {}
        for control, sample in first + again.received:
            by_sample.setdefault(sample, set()).add(control)
        # Five samples, one control id each, however often a message went out.
        assert len(by_sample) == 5 and all(len(ids) == 1 for ids in by_sample.values()), by_sample
        assert {s for _c, s in delivered} == set(by_sample)
        # The acknowledged two were not sent again; the one on the wire at the kill was, same id.
        assert not {c for c, _s in first[:2]} & {c for c, _s in again.received}
        assert first[2][0] in {c for c, _s in again.received}
        # A third run sends nothing and says so.
        n = len(again.received)
        third = _classify(files, again.url.replace("0.5", "10"), db)
        assert third.returncode == 0, third.stderr
        assert len(again.received) == n
        assert "5 queued or sent before (not sent again)" in third.stderr
    finally:
        again.close()


def test_resend_is_a_corrected_result_and_another_result_is_held(tmp_path):
    files = _files(tmp_path, 2)
    db = tmp_path / "box.sqlite"
    peer = Peer()
    try:
        assert _classify(files, peer.url, db).returncode == 0
        originals = dict(peer.received)
        # Other settings give another result for the same samples: not sent without --lis-correct.
        held = _classify(files, peer.url, db, "--no-adapt")
        assert held.returncode == 0, held.stderr
        assert len(peer.received) == 2
        assert "2 not sent: another result of the sample was given to the LIS before" in held.stderr
        # Asked for, they go as corrections: OBR-25 and every OBX-11 'C', under new control ids.
        texts = []
        peer._handle_orig = peer._handle

        def keep(conn, text):
            texts.append(text)
            return peer._handle_orig(conn, text)

        peer._handle = keep
        corrected = _classify(files, peer.url, db, "--no-adapt", "--lis-correct")
        assert corrected.returncode == 0, corrected.stderr
        assert len(texts) == 2 and not set(dict(peer.received[2:])) & set(originals)
        for text in texts:
            msg = validate(text)
            obr = msg.children[1].ORU_R01_ORDER_OBSERVATION.OBR
            assert obr.obr_25.value == "C"
            assert all(seg.split("|")[11] == "C" for seg in text.split("\r") if seg.startswith("OBX|"))
        # The same resend asked for again while nothing is pending: a second correction, not a final.
        box = Outbox(db)
        assert box.count("sent") == 4 and box.count("pending") == 0
        box.close()
    finally:
        peer.close()


def test_results_left_unacknowledged_exit_1_unless_queueing_is_asked_for(tmp_path):
    files = _files(tmp_path, 1)
    db = tmp_path / "box.sqlite"
    url = f"mllp://127.0.0.1:{free_port()}?timeout=0.2"
    down = _classify(files, url, db, "--lis-wait", "1")
    assert down.returncode == 1
    assert "NOT acknowledged: 1 pending" in down.stderr
    # Retries are counted, not printed one by one.
    assert down.stderr.count("not reached") <= 2, down.stderr
    ok = _classify(files, url, db, "--lis-wait", "0.5", "--lis-queue-ok")
    assert ok.returncode == 0, ok.stderr
    assert "1 queued or sent before" in ok.stderr
