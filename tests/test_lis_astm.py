"""ASTM E1394 records in E1381 frames, over TCP and a serial line (a pseudo-terminal here).

The receiver in this file is written from the standard's rules independently of edgehema's sender:
it checks every frame's checksum, its number (1..7, then 0, 1, ...), its length (240 text
characters at most), ETB/ETX, CR LF, and the record order (H, P, comments, O, comments, R..., L). It
can answer NAK to ENQ (busy), stay silent, NAK frames, or drop the line, to prove the queue loses and
duplicates nothing. The checksum is also checked against a worked example from the test suite of
python-astm, an independent implementation: ``<STX>1A|B|C|D<CR><ETX>`` has checksum ``BF``.
"""

from __future__ import annotations

import copy
import os
import re
import threading
import time

import pytest

from edgehema.exceptions import EdgehemaError
from edgehema.lis import open_destination
from edgehema.lis.astm import build_records, checksum, esc, frames
from edgehema.lis.outbox import Outbox
from edgehema.sinks.lis_sink import LisSink

from .test_lis import FAST, LoopbackServer, free_port, result, send_once_listening, wait_for

ENQ, ACK, NAK, EOT, STX, ETX, ETB = b"\x05", b"\x06", b"\x15", b"\x04", b"\x02", b"\x03", b"\x17"

RECORD_ORDER = re.compile(r"^H(C)*P(C)*O(C)*(R(C)*)+L$")


class AstmReceiver:
    """The LIS side of E1381 on a byte stream (``read(n)``/``write(b)`` callables)."""

    def __init__(self, script=()):
        self.script = list(script)  # per transfer: "ok", "busy", "silent", "nak3", "drop3"
        self.messages: list[list[str]] = []  # records of every completed transfer
        self.errors: list[str] = []
        self.frame_numbers: list[int] = []

    def handle(self, read, write) -> None:
        while True:
            byte = read(1)
            if not byte:
                return
            if byte != ENQ:
                continue
            action = self.script.pop(0) if self.script else "ok"
            if action == "busy":
                write(NAK)
                continue
            if action == "silent":
                continue
            write(ACK)
            if not self._transfer(read, write, action):
                return

    def _transfer(self, read, write, action) -> bool:
        expected, records, partial, naks, frames_seen = 1, [], b"", 0, 0
        while True:
            byte = read(1)
            if not byte:
                return False
            if byte == EOT:
                if partial:
                    self.errors.append("EOT inside a record")
                self.messages.append(records)
                return True
            if byte != STX:
                self.errors.append(f"unexpected byte {byte!r} between frames")
                continue
            frame = b""
            while not frame.endswith(b"\r\n"):
                chunk = read(1)
                if not chunk:
                    return False
                frame += chunk
            frames_seen += 1
            if action == "drop3" and frames_seen == 3:
                return False  # the line goes dead mid-message
            if action == "nak3" and naks < 3 and frames_seen >= 2:
                naks += 1
                write(NAK)
                continue
            body, cs = frame[:-4], frame[-4:-2]
            if cs != f"{sum(body) % 256:02X}".encode():
                self.errors.append(f"bad checksum {cs!r} on frame {body[:20]!r}")
                write(NAK)
                continue
            number, text, end = int(body[:1]), body[1:-1], body[-1:]
            if number != expected % 8:
                self.errors.append(f"frame number {number}, expected {expected % 8}")
            if len(text) > 240:
                self.errors.append(f"frame of {len(text)} text characters")
            if end not in (ETX, ETB):
                self.errors.append("frame without ETX/ETB")
            self.frame_numbers.append(number)
            expected += 1
            partial += text
            if end == ETX:
                if not partial.endswith(b"\r"):
                    self.errors.append("record without CR")
                records.append(partial[:-1].decode("latin-1"))
                partial = b""
            write(ACK)

    @staticmethod
    def control_id(records: list[str]) -> str:
        return records[0].split("|")[2]

    @staticmethod
    def sample_id(records: list[str]) -> str:
        return next(r for r in records if r.startswith("O|")).split("|")[2]

    def distinct(self) -> dict[str, str]:
        return {self.control_id(m): self.sample_id(m) for m in self.messages}


class TcpAstmLis(LoopbackServer):
    def __init__(self, receiver: AstmReceiver, port: int = 0):
        self.receiver = receiver
        super().__init__(port, backlog=8)

    def on_connection(self, conn):
        conn.settimeout(5)

        def read(n):
            try:
                return conn.recv(n)
            except OSError:
                return b""

        try:
            self.receiver.handle(read, conn.sendall)
        finally:
            conn.close()


# --- framing ---------------------------------------------------------------------------------

def test_checksum_worked_example():
    assert checksum(b"1A|B|C|D\r\x03") == b"BF"  # python-astm's test vector
    frame = frames(["A|B|C|D"])[0]
    assert frame == b"\x021A|B|C|D\r\x03BF\r\n"


def test_long_records_split_at_240_and_numbers_wrap_7_to_0():
    long = "R|1|^^^X|" + "9" * 600
    out = frames(["H|\\^&"] + [long] + [f"C|{k}|I|x|G" for k in range(8)])
    numbers = [int(f[1:2]) for f in out]
    assert numbers == [1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4]
    split = out[1:4]
    assert [f[-5:-4] for f in split] == [ETB, ETB, ETX]
    assert all(len(f) - 7 <= 240 for f in out)
    assert b"".join(f[2:-5] for f in split) == (long + "\r").encode()


def test_records_and_escaping():
    r = result(1, sample_id="A|B^C\\D&E", flags=["out_of_distribution"])
    records = build_records(r, "CTRL1")
    kinds = "".join(rec[0] for rec in records)
    assert RECORD_ORDER.match(kinds), kinds
    assert records[0].startswith("H|\\^&|CTRL1|") and records[-1] == "L|1|N"
    assert records[1] == "P|1||A&F&B&S&C&R&D&E&E"
    results = [rec.split("|") for rec in records if rec.startswith("R|")]
    assert results[0][2:5] == ["^^^RBC^789-8", "6.48", "10*6/uL"] and results[0][6] == "A"
    assert any(rec.startswith("C|") and "FLAG out_of_distribution" in rec for rec in records)
    assert esc("x|y") == "x&F&y"


@pytest.mark.parametrize("url,problem", [
    ("astm+tcp://lis", "no port given"),
    ("astm+serial://", "expected astm\\+serial"),
    ("astm+tcp://lis:1?speed=3", "unknown option"),
])
def test_bad_astm_urls(url, problem):
    with pytest.raises(EdgehemaError, match=problem):
        open_destination(url)


# --- transfers with faults -------------------------------------------------------------------

def test_every_result_arrives_once_over_tcp_through_every_fault(tmp_path):
    """Busy (NAK to ENQ), silent, three NAKs on a frame, the line dropped mid-message: every result
    arrives complete, once per control id, every frame valid."""
    receiver = AstmReceiver(["busy", "silent", "nak3", "drop3"])
    lis = TcpAstmLis(receiver)
    db = tmp_path / "o.sqlite"
    try:
        sink = LisSink(f"astm+tcp://127.0.0.1:{lis.port}?timeout=0.5", db, wait_s=60, **FAST)
        results = [result(n, flags=["out_of_distribution"] if n == 2 else []) for n in range(1, 6)]
        for r in results:
            sink.write(r)
        sink.close()
        assert receiver.script == []  # every fault was met
        assert not receiver.errors
        distinct = receiver.distinct()
        assert sorted(distinct.values()) == [r["sample_id"] for r in results]
        box = Outbox(db)
        assert box.count("sent") == 5 and {m.control_id for m in box.messages()} == set(distinct)
        box.close()
        for records in receiver.messages:
            assert RECORD_ORDER.match("".join(r[0] for r in records))
        assert 0 in receiver.frame_numbers  # messages are long enough to wrap 7 -> 0
    finally:
        lis.close()


def test_lis_down_then_back(tmp_path):
    port = free_port()
    sink = LisSink(f"astm+tcp://127.0.0.1:{port}?timeout=0.5", tmp_path / "o.sqlite", wait_s=30, **FAST)
    sink.write(result(1))
    time.sleep(0.5)
    assert sink.pending() == 1
    receiver = AstmReceiver()
    lis = TcpAstmLis(receiver, port=port)
    try:
        sink.close()
        assert list(receiver.distinct().values()) == ["S-0001"] and not receiver.errors
    finally:
        lis.close()


def test_serial_line(tmp_path):
    """astm+serial:// through pyserial on a pseudo-terminal, the LIS on the other end."""
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    receiver = AstmReceiver()

    def read(n):
        try:
            return os.read(master, n)
        except OSError:
            return b""

    t = threading.Thread(target=receiver.handle, args=(read, lambda b: os.write(master, b)), daemon=True)
    t.start()
    try:
        sink = LisSink(f"astm+serial://{os.ttyname(slave)}?baud=9600&timeout=2", tmp_path / "o.sqlite", wait_s=30,
                       **FAST)
        sink.write(result(7))
        sink.write(result(8, flags=["platelet_clumps_suspected"]))
        sink.close()
        assert wait_for(lambda: len(receiver.messages) == 2)
        assert list(receiver.distinct().values()) == ["S-0007", "S-0008"] and not receiver.errors
    finally:
        os.close(slave)
        os.close(master)


def test_copy_unchanged():
    r = result(3)
    before = copy.deepcopy(r)
    build_records(r, "X")
    assert r == before


def test_lis_listen_astm_receives_checks_and_spots_resends(tmp_path):
    import json
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgehema", "lis-listen", "--astm", "--port", str(port), "--json",
                             "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dest = open_destination(f"astm+tcp://127.0.0.1:{port}?timeout=5")
        message = dest.render(result(1, flags=["out_of_distribution"]), "C1")
        send_once_listening(dest, message, "C1", "lis-listen --astm")
        dest.send(message, "C1")  # a resend
        dest.send(dest.render(result(2), "C2"), "C2")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["control_id"], r["resend"]) for r in records] == [("C1", False), ("C1", True), ("C2", False)]
    assert records[0]["flags"] == ["out_of_distribution"] and records[0]["results"]["PLT"] == "547 10*3/uL"
    assert all(not r["problems"] for r in records)
