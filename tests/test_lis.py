"""Results to the LIS over HL7 v2.5.1 / MLLP: messages checked by an independent parser, and the
store-and-forward queue tried against a LIS that refuses, drops, stays silent, rejects, and an
edgehema killed -9 with 50 results queued. Nothing may be lost; nothing may arrive twice under two
different control ids.

The peer here frames MLLP with plain sockets and parses every message with hl7apy (edgehema builds
them with python-hl7), validating each against the HL7 2.5.1 ORU^R01 structure.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

hl7apy = pytest.importorskip("hl7apy", reason="hl7apy (test extra) validates the HL7 messages")
from hl7apy.consts import VALIDATION_LEVEL  # noqa: E402
from hl7apy.parser import parse_message  # noqa: E402

from edgehema.exceptions import EdgehemaError  # noqa: E402
from edgehema.lis import open_destination  # noqa: E402
from edgehema.lis.hl7_message import build_oru  # noqa: E402
from edgehema.lis.outbox import Outbox  # noqa: E402
from edgehema.sinks.lis_sink import LisSink  # noqa: E402

RESULT = {
    "sample_id": "cat-5-0001", "species": "cat", "source": "stream tag 1", "profile": "optical-11",
    "events": {"noise": 133, "rbc": 131803, "retic": 548, "coincidence": 7225, "plt": 10291, "total": 150000},
    "cells": {"rbc": 143828, "retic": 596, "plt": 12141}, "retic_percent": 0.4141,
    "concentration": {"rbc_per_uL": 6482943.9, "plt_per_uL": 547237.6, "retic_per_uL": 26842.7},
    "flags": [], "flag_details": {},
    "qc": {"coincidence_fraction": 0.048167},
    "model": {"name": "edgehema-reference-tflite-int8", "version": "1.0.0", "sha256": "49d7e173" * 8,
              "backend": "tflite"},
    "seconds": 0.1156, "tag": 1, "complete": True,
}


def result(n: int, **changes) -> dict:
    r = copy.deepcopy(RESULT)
    r["sample_id"] = f"S-{n:04d}"
    r["tag"] = n
    r.update(changes)
    return r


def validate(text: str):
    msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert msg.validate()
    return msg


# --- the peer --------------------------------------------------------------------------------

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


class LoopbackServer:
    """A TCP server on 127.0.0.1 (a free port, or ``port``) whose accept loop hands each connection
    to ``on_connection``; ``close`` stops it and lets go of the port."""

    def __init__(self, port: int = 0, backlog: int = 16):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.on_connection(conn)

    def on_connection(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self):
        self._stop = True
        self.thread.join(2)  # the accept loop has let go of the socket
        self.sock.close()


class Peer(LoopbackServer):
    """A LIS on 127.0.0.1. ``script``: what to do with each message received, in order
    ('AA' once the script is used up): AA, AE, AR, 'drop' (close, no ACK), 'silent' (never answer),
    'other' (an ACK for another control id)."""

    def __init__(self, script=(), port: int = 0):
        self.script = list(script)
        self.received: list[tuple[str, str]] = []  # (control id, sample id), every delivery
        self.invalid: list[str] = []
        self._held: list[socket.socket] = []
        super().__init__(port)
        self.url = f"mllp://127.0.0.1:{self.port}?timeout=0.5"

    def on_connection(self, conn):
        threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn):
        buf = b""
        conn.settimeout(5)
        try:
            while not self._stop:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while SB in buf and EB + CR in buf:
                    start = buf.index(SB)
                    end = buf.index(EB + CR)
                    text = buf[start + 1:end].decode("utf-8")
                    buf = buf[end + 2:]
                    if not self._handle(conn, text):
                        return
        except OSError:
            return
        finally:
            if conn not in self._held:
                conn.close()

    def _handle(self, conn, text: str) -> bool:
        try:
            msg = validate(text)
            control = msg.msh.msh_10.value
            sample = msg.children[1].ORU_R01_ORDER_OBSERVATION.OBR.obr_3.value
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            self.invalid.append(f"{type(exc).__name__}: {exc}")
            return False
        self.received.append((control, sample))
        action = self.script.pop(0) if self.script else "AA"
        if action == "drop":
            return False
        if action == "silent":
            self._held.append(conn)
            return False
        acked = "OTHER0001" if action == "other" else control
        code = "AA" if action == "other" else action
        ack = (f"MSH|^~\\&|LIS||edgehema||20260101000000||ACK^R01^ACK|A{len(self.received)}|P|2.5.1\r"
               f"MSA|{code}|{acked}|{'rejected by test' if code != 'AA' else ''}\r")
        conn.sendall(SB + ack.encode() + EB + CR)
        return True

    def distinct(self) -> dict[str, str]:
        return dict(self.received)

    def close(self):
        super().close()
        for c in self._held:
            c.close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


FAST = {"first_pause_s": 0.05, "max_pause_s": 0.2}


# --- messages --------------------------------------------------------------------------------

def test_oru_validates_against_hl7_251_with_loinc_and_ucum():
    msg = validate(build_oru(RESULT, "ABC000000000007"))
    assert msg.msh.msh_9.value == "ORU^R01^ORU_R01" and msg.msh.msh_12.value == "2.5.1"
    assert msg.msh.msh_10.value == "ABC000000000007"
    group = msg.children[1]
    assert group.ORU_R01_PATIENT.PID.pid_35.value == "cat^cat^L"
    obs = group.ORU_R01_ORDER_OBSERVATION.children
    obx = {o.OBX.obx_3.obx_3_1.value: o.OBX for o in obs if o.name == "ORU_R01_OBSERVATION"}
    assert obx["789-8"].obx_5.value == "6.48" and obx["789-8"].obx_6.obx_6_1.value == "10*6/uL"
    assert obx["777-3"].obx_5.value == "547" and obx["777-3"].obx_6.obx_6_1.value == "10*3/uL"
    assert obx["17849-1"].obx_5.value == "0.41" and obx["17849-1"].obx_6.obx_6_1.value == "%"
    assert obx["60474-4"].obx_5.value == "0.0268"
    assert obx["EHM-COINC"].obx_5.value == "4.82"
    assert all(o.obx_8.value == "" for o in obx.values())  # no flag: no abnormal flag


def test_a_flagged_result_never_looks_clean_at_the_lis():
    r = result(1, flags=["platelet_clumps_suspected", "out_of_distribution"],
                flag_details={"platelet_clumps_suspected": "2.7 % of PLT events | in clumps"})
    text = build_oru(r, "X1")
    msg = validate(text)
    obs = [o.OBX for o in msg.children[1].ORU_R01_ORDER_OBSERVATION.children if o.name == "ORU_R01_OBSERVATION"]
    assert obs and all(o.obx_8.value == "A" for o in obs)
    notes = [s for s in text.split("\r") if s.startswith("NTE")]
    assert any("FLAG platelet_clumps_suspected: 2.7 % of PLT events \\F\\ in clumps" in n for n in notes)
    assert any("FLAG out_of_distribution" in n for n in notes)
    assert any("sha256 " + "49d7e173" * 8 in n for n in notes)


def test_awkward_sample_ids_and_missing_parts_still_validate():
    r = result(1, sample_id="A|B^C&D~E\\F", species=None, concentration={"rbc_per_uL": None, "plt_per_uL": None,
                                                                          "retic_per_uL": None})
    msg = validate(build_oru(r, "X2"))
    obr = msg.children[1].ORU_R01_ORDER_OBSERVATION.OBR
    assert obr.obr_3.value == "A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F"  # escaped on the wire
    codes = [o.OBX.obx_3.obx_3_1.value for o in msg.children[1].ORU_R01_ORDER_OBSERVATION.children
             if o.name == "ORU_R01_OBSERVATION"]
    assert "789-8" not in codes and "17849-1" in codes and "EHM-RBC-N" in codes


@pytest.mark.parametrize("url,problem", [
    ("http://lis:80", "unknown LIS protocol 'http'"),
    ("mllp://", "expected mllp://HOST:PORT"),
    ("mllp://lis:port", "the port is not a number"),
    ("mllp://lis:2575?timout=3", "unknown option(s) timout"),
])
def test_bad_lis_urls_are_one_line(url, problem):
    with pytest.raises(EdgehemaError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        open_destination(url)


# --- store and forward -----------------------------------------------------------------------

def send_once_listening(dest, message: str, control_id: str, what: str, timeout: float = 30.0) -> None:
    """Send the first message to a ``lis-listen`` started as a subprocess, retrying while it starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            dest.send(message, control_id)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.2)


def wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_every_result_arrives_once_through_every_fault(tmp_path):
    """The LIS is down at first (connection refused), then drops a connection mid-message, stays
    silent, acknowledges another message, refuses one (AE): every result arrives, each under one
    control id, in order, and a resend carries the id of the first try."""
    port = free_port()
    db = tmp_path / "outbox.sqlite"
    sink = LisSink(f"mllp://127.0.0.1:{port}?timeout=0.5", db, wait_s=30, **FAST)
    results = [result(n) for n in range(1, 11)]
    for r in results:
        sink.write(r)
    time.sleep(0.6)  # the forwarder meets a closed port a few times
    assert sink.pending() == 10
    peer = Peer(["drop", "silent", "other", "AE"], port=port)
    try:
        sink.close()
        distinct = peer.distinct()
        assert not peer.invalid
        assert sorted(distinct.values()) == [r["sample_id"] for r in results]
        assert len(distinct) == 10  # one control id per result, whatever the resends
        assert len(peer.received) >= 14  # the four faults were each followed by a resend
        firsts = list(dict.fromkeys(c for c, _ in peer.received))
        assert [distinct[c] for c in firsts] == [r["sample_id"] for r in results]  # in order
        box = Outbox(db)
        assert box.count("sent") == 10 and box.count("pending") == 0
        assert {m.control_id for m in box.messages()} == set(distinct)
        box.close()
    finally:
        peer.close()


def test_a_result_emitted_twice_is_queued_once(tmp_path):
    """After a crash the stream emits again what it had not marked emitted: the outbox keys on the
    result, so the LIS does not get it twice."""
    peer = Peer()
    try:
        sink = LisSink(peer.url, tmp_path / "o.sqlite", wait_s=10, **FAST)
        r = result(1)
        sink.write(r)
        sink.write(copy.deepcopy(r))
        sink.close()
        assert len(peer.received) == 1
    finally:
        peer.close()


def test_rejected_three_times_is_failed_the_queue_moves_on_and_resend_works(tmp_path):
    peer = Peer(["AE", "AE", "AE"])
    db = tmp_path / "o.sqlite"
    try:
        sink = LisSink(peer.url, db, wait_s=10, **FAST)
        sink.write(result(1))
        sink.write(result(2))
        sink.close()
        box = Outbox(db)
        failed = box.messages("failed")
        assert [m.sample_id for m in failed] == ["S-0001"] and failed[0].rejections == 3
        assert "AE rejected by test" in failed[0].last_error
        assert [m.sample_id for m in box.messages("sent")] == ["S-0002"]
        control = failed[0].control_id
        box.close()
        cli = subprocess.run([sys.executable, "-m", "edgehema", "outbox", "--db", str(db), "--resend-failed",
                              "--send", peer.url, "--wait", "10"], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "1 message(s) queued again" in cli.stdout and "2 sent" in cli.stdout
        assert [c for c, s in peer.received if s == "S-0001"] == [control] * 4  # the same id every time
    finally:
        peer.close()


KILL_SCRIPT = """
import sys, time, json
from edgehema.sinks.lis_sink import LisSink
sys.path.insert(0, {tests!r})
from test_lis import result
sink = LisSink({url!r}, {db!r}, wait_s=3600, first_pause_s=0.05, max_pause_s=0.2)
for n in range(1, 51):
    sink.write(result(n))
print("queued", flush=True)
time.sleep(3600)
"""


def test_killed_minus_9_with_50_results_queued_loses_and_duplicates_nothing(tmp_path):
    """edgehema is killed -9 while a message is on the wire (the LIS holds it without answering) and
    50 results are queued; the next start sends all 50, each under the control id it was queued with."""
    silent = Peer(["silent"] * 1000)
    db = tmp_path / "o.sqlite"
    code = KILL_SCRIPT.format(tests=str(Path(__file__).parent), url=silent.url.replace("0.5", "30"), db=str(db))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "queued"
        assert wait_for(lambda: len(silent.received) >= 1)  # mid-send
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        silent.close()
    box = Outbox(db)
    queued = {m.control_id: m.sample_id for m in box.messages()}
    assert len(queued) == 50 and box.count("pending") == 50
    box.close()
    peer = Peer(port=silent.port)  # the LIS back at its address
    try:
        # An answer slower than the ACK timeout is resent under the same id (at least once, by
        # design): a generous timeout keeps a loaded machine from turning that into a "duplicate".
        cli = subprocess.run([sys.executable, "-m", "edgehema", "outbox", "--db", str(db), "--send", peer.url.replace("0.5", "10"),
                              "--wait", "60"], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert "50 sent" in cli.stdout
        assert peer.distinct() == queued  # all 50, under their queued ids
        assert len(peer.received) == 50 and not peer.invalid
        # The message on the wire when edgehema died went again with the same id.
        assert silent.received[0][0] in queued
    finally:
        peer.close()


# --- the command line ------------------------------------------------------------------------

def _sample_files(tmp_path, n=2):
    out = tmp_path / "samples"
    subprocess.run([sys.executable, "-m", "edgehema", "simulate", "--species", "dog", "--samples", str(n),
                    "--seed", "3", "-n", "3000", "-o", str(out)], check=True, capture_output=True, timeout=120)
    return sorted(out.glob("*.csv"))


def test_classify_sends_to_the_lis_and_outbox_lists_it(tmp_path):
    files = _sample_files(tmp_path)
    peer = Peer()
    db = tmp_path / "box.sqlite"
    try:
        cli = subprocess.run([sys.executable, "-m", "edgehema", "classify", "--json", "--jobs", "1", "--lis",
                              peer.url, "--outbox", str(db), *map(str, files)],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        printed = [json.loads(line) for line in cli.stdout.splitlines()]
        assert sorted(peer.distinct().values()) == sorted(r["sample_id"] for r in printed)
        listed = subprocess.run([sys.executable, "-m", "edgehema", "outbox", "--db", str(db), "--json"],
                                capture_output=True, text=True, timeout=60)
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["status"] for r in rows] == ["sent", "sent"] and all(r["ack"].startswith("AA") for r in rows)
    finally:
        peer.close()


def test_classify_with_the_lis_down_keeps_results_queued(tmp_path):
    files = _sample_files(tmp_path)
    db = tmp_path / "box.sqlite"
    cli = subprocess.run([sys.executable, "-m", "edgehema", "classify", "--jobs", "1", "--lis",
                          f"mllp://127.0.0.1:{free_port()}?timeout=0.5", "--lis-wait", "1", "--outbox", str(db),
                          str(files[0])], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1, cli.stderr  # left unacknowledged (--lis-queue-ok makes that 0)
    assert "1 result(s) still pending" in cli.stderr
    box = Outbox(db)
    assert box.count("pending") == 1 and "refused" in box.messages()[0].last_error.lower()
    box.close()


def test_lis_listen_receives_and_spots_resends(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgehema", "lis-listen", "--port", str(port), "--json",
                             "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dest = open_destination(f"mllp://127.0.0.1:{port}")
        send_once_listening(dest, build_oru(result(1), "C1"), "C1", "lis-listen")
        dest.send(build_oru(result(1), "C1"), "C1")  # a resend
        dest.send(build_oru(result(2, flags=["out_of_distribution"]), "C2"), "C2")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["control_id"], r["resend"]) for r in records] == [("C1", False), ("C1", True), ("C2", False)]
    assert records[2]["flags"] == ["out_of_distribution"]
    assert {o["name"]: o["value"] for o in records[0]["observations"]}["PLT"] == "547"


def test_stream_journals_queues_and_sends_and_a_down_lis_gets_everything_later(tmp_path):
    """``stream --lis``: the outbox is the journal's database. With the LIS down the results are
    journaled and queued; the next start (LIS back) sends them, each under its queued control id."""
    from edgehema.simulator.emulator import InstrumentEmulator

    from .test_stream import start_tcp_instrument

    emu = InstrumentEmulator("dog", samples=3, events=8000, seed=4)
    t, port = start_tcp_instrument(emu)
    journal = tmp_path / "j.sqlite"
    lis_port = free_port()
    # An ACK timeout a loaded machine can keep: with 0.5 s the peer's answer came late once beside a
    # training run, and the message was sent again under its control id (right, but not this test's count).
    url = f"mllp://127.0.0.1:{lis_port}?timeout=5"
    cmd = [sys.executable, "-m", "edgehema", "stream", "--port", port, "--journal", str(journal),
           "--archive", str(tmp_path / "archive"), "--no-reconnect", "--max-samples", "3", "--lis", url,
           "--output", str(tmp_path / "out.jsonl")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    t.join(10)
    assert first.returncode == 0, first.stderr
    assert "3 result(s) still pending" in first.stderr and "connection refused" in first.stderr
    box = Outbox(journal)
    queued = {m.control_id: m.sample_id for m in box.messages("pending")}
    box.close()
    assert sorted(queued.values()) == sorted(tr["sample_id"] for tr in emu.truths)
    peer = Peer(port=lis_port)
    try:
        again = subprocess.run(cmd[:5] + ["socket://127.0.0.1:9"] + cmd[6:] + ["--idle-exit", "1"],
                               capture_output=True, text=True, timeout=180)
        assert wait_for(lambda: len(peer.distinct()) == 3)
        assert peer.distinct() == queued and len(peer.received) == 3 and not peer.invalid
    finally:
        peer.close()
    with __import__("sqlite3").connect(journal) as db:
        assert db.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()[0] == 3
    assert again.returncode in (0, 1)


def test_scattergram_travels_as_an_ed_observation(tmp_path):
    """``images=1``: the PNG as OBX type ED (base64). hl7apy's tables cap ED data at 199 characters
    (the standard's TX allows 65,536), so the message is validated strictly without that segment and
    the ED segment parsed tolerantly."""
    import base64

    png = tmp_path / "S-0001.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    r = result(1, scattergram=str(png))
    assert "|ED|" not in build_oru(r, "X")  # only when asked for
    dest = open_destination("mllp://lis:2575?images=1")
    text = dest.render(r, "X")
    segments = text.split("\r")
    ed = [s for s in segments if s.startswith("OBX") and "|ED|" in s]
    assert len(ed) == 1
    validate("\r".join(s for s in segments if s not in ed))
    msg = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    obx = [o.OBX for o in msg.children[1].ORU_R01_ORDER_OBSERVATION.children if o.name == "ORU_R01_OBSERVATION"][-1]
    assert obx.obx_2.value == "ED"
    assert base64.b64decode(obx.obx_5.value.split("^")[4]) == png.read_bytes()
    png.unlink()  # the picture gone by the time the message is built: the counts still go, with a note
    assert "scattergram" in dest.render(r, "Y") and "|ED|" not in dest.render(r, "Y")
