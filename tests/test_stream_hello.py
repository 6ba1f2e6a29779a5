"""A host that joins an instrument mid-session (restart, reconnect): nothing it receives is dropped.
Frames before HELLO wait for it (the host asks, the instrument answers), or are decoded with the
instrument's last known HELLO (flagged until confirmed), or, if no HELLO ever comes, the sample is
reported ``no_hello`` with its frames archived. Repeated log lines are counted."""

import os
import time

import pytest

from edgehema.simulator.emulator import InstrumentEmulator
from edgehema._utils.log_limit import RateLimitedLog
from edgehema.stream.session import SampleClosed, SampleOpened, WireSession
from firmware_bridge import codec
from firmware_bridge import protocol as P



def stream_bytes(samples=2, events=3000, seed=3):
    emu = InstrumentEmulator("human", samples=samples, events=events, seed=seed)
    chunks = [c.data for c in emu.chunks()]
    return emu, chunks[0], b"".join(chunks[1:])  # (emulator, its HELLO, everything after it)


def closed(items):
    return [i for i in items if isinstance(i, SampleClosed)]


def test_frames_before_hello_wait_for_the_hello_reply():
    emu, hello, rest = stream_bytes()
    session = WireSession()
    session.request_hello()
    items = list(session.feed(rest[: len(rest) // 2]))
    assert not closed(items) and session.waiting_for_hello
    # The instrument answers HELLO_REQUEST: everything held is decoded, in order, then the rest.
    items += list(session.feed(hello + rest[len(rest) // 2:]))
    done = closed(items)
    assert [c.sample.sample_id for c in done] == [t["sample_id"] for t in emu.truths]
    assert all(c.complete and c.sample.received == 3000 for c in done)
    assert all("hello_missing" not in c.sample.flags and "no_hello" not in c.sample.flags for c in done)


def test_no_hello_at_all_reports_the_samples_with_their_frames():
    emu, _hello, rest = stream_bytes()
    session = WireSession()
    items = list(session.feed(rest)) + list(session.disconnect())
    done = closed(items)
    assert [c.sample.sample_id for c in done] == [t["sample_id"] for t in emu.truths]
    for c in done:
        assert "no_hello" in c.sample.flags and c.complete is False
        assert c.sample.received == 3000 and len(c.sample.frames) > 3000 // 185
    assert len([i for i in items if isinstance(i, SampleOpened)]) == 2


def test_last_known_hello_decodes_flagged_until_confirmed():
    emu, hello, rest = stream_bytes(samples=2)
    remembered = (hello[1:], "2026-11-24T00:00:00+00:00")  # (frame without the reset 0x00, when)
    session = WireSession(fallback_hello=remembered)
    items = list(session.feed(rest))
    done = closed(items)
    assert len(done) == 2 and all("hello_missing" in c.sample.flags for c in done)
    assert all(c.sample.received == 3000 for c in done)
    # Mid-sample, the instrument answers our HELLO_REQUEST with the same scaling: confirmed, unflagged.
    emu2, hello2, rest2 = stream_bytes(samples=1)
    session = WireSession(fallback_hello=remembered)
    frames = list(codec.FrameDecoder().feed(rest2))
    wire = [codec.encode_frame(f.type, f.seq, f.payload) for f in frames]
    k = len(frames) // 2
    items = list(session.feed(b"".join(wire[:k])))
    session.request_hello()
    # A reply carries the number of the frame sent before it (PROTOCOL.md).
    reply = codec.encode_message(P.Hello(emu2.instrument_id, "edgehema-emulator 1.0", "optical-11", emu2._scales),
                                 frames[k - 1].seq)
    items += list(session.feed(reply + b"".join(wire[k:])))
    done = closed(items)
    assert len(done) == 1 and done[0].complete and "hello_missing" not in done[0].sample.flags


def test_repeated_log_lines_are_counted():
    lines, now = [], [0.0]
    log = RateLimitedLog(lines.append, window=10.0, clock=lambda: now[0])
    for i in range(1500):
        now[0] = i / 1500  # 1,500 corrupted-frame notices in one second
        log(f"{i} corrupted frame(s) dropped", kind="corrupted")
    assert len(lines) == 1
    now[0] = 11.0
    log("1 corrupted frame(s) dropped", kind="corrupted")
    assert len(lines) == 2 and "1,499 more like it" in lines[1]
    log("other", kind="")
    log.flush()
    assert lines[-1] == "other"


def test_garbage_flood_is_rate_limited_in_the_stream_log(tmp_path):
    from edgehema.model.classifier import Classifier
    from edgehema.stream.runner import StreamConfig, StreamRunner

    logs = []
    runner = StreamRunner(StreamConfig(port="loop://", journal=tmp_path / "j.sqlite", archive_dir=tmp_path / "a"),
                          lambda r: None, log=logs.append, classifier=Classifier())
    session = WireSession()
    runner._session = session
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(200):  # random bytes with frame delimiters: hundreds of corrupted frames
        junk = bytearray(rng.integers(1, 256, 4000, dtype="uint8").tobytes())
        junk[::50] = b"\x00" * len(junk[::50])
        runner._handle_all(session.feed(bytes(junk)))
    assert session.decoder.stats.bad_frames > 1000
    assert sum("corrupted" in line for line in logs) <= 2, logs[:5]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_emulator_answers_hello_request_on_a_pty():
    import threading

    from edgehema.simulator.emulator import write_pty

    emu = InstrumentEmulator("human", samples=1, events=2000, seed=2)
    box, ready, go = {}, threading.Event(), threading.Event()
    th = threading.Thread(target=write_pty, args=(emu, 5000.0),
                          kwargs={"ready": lambda n: (box.setdefault("port", n), ready.set()), "start": go}, daemon=True)
    th.start()
    assert ready.wait(10)
    fd = os.open(box["port"], os.O_RDWR | os.O_NOCTTY)
    go.set()
    time.sleep(0.1)
    os.write(fd, codec.encode_frame(P.HELLO_REQUEST, 0, b""))
    data = b""
    deadline = time.time() + 10
    while time.time() < deadline and th.is_alive():
        try:
            data += os.read(fd, 65536)
        except OSError:
            break
    os.close(fd)
    types = [f.type for f in codec.FrameDecoder().feed(data)]
    assert types.count(P.HELLO) == 2  # the first HELLO and the reply to our request
    assert ("HELLO_REQUEST", None) in emu.received
