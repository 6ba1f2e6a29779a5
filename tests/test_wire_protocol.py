"""Wire protocol: the specification's worked example, round trips, resynchronisation, bounded memory."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import codec
from firmware_bridge import protocol as P


def test_worked_example_of_the_specification():
    m = P.SampleEnd(7, 150000, 24822249, 12411, 0)
    assert m.pack().hex(" ") == "07 00 00 00 f0 49 02 00 e9 c1 7a 01 00 00 00 00 7b 30 00 00 00"
    wire = codec.encode_message(m, 42)
    assert wire.hex(" ") == ("04 01 04 2a 02 15 02 07 01 01 04 f0 49 02 05 e9 c1 7a 01 01 01 01 03 7b 30 01 01 05 "
                             "8f 0a 4b 4b 00")
    ev = P.Events(7, 0, np.array([[11073, 280, 4714]], dtype=np.uint16))
    assert codec.encode_message(ev, 43).hex(" ") == (
        "04 01 03 2b 02 10 02 07 01 01 01 01 01 01 02 01 0b 41 2b 18 01 6a 12 bd 18 b0 79 00")
    assert codec.crc32(b"123456789") == 0xCBF43926  # the CRC's check value


def test_every_message_round_trips():
    msgs = [
        P.Hello("XN-01", "1.4.2", "optical-11", (P.FeatureScale("a", 1.0), P.FeatureScale("b", 32.0, -5.0))),
        P.SampleBegin(3, "S-3", "dog", 0, 625.0, 1_767_225_600_000_000),
        P.SampleEnd(3, 10, 123, 456, 1),
        P.Heartbeat(99, 1),
        P.Status(1, 300, "clog suspected"),
        P.Ack(3, 0),
        P.Resend(3),
    ]
    dec = codec.FrameDecoder()
    frames = list(dec.feed(b"".join(codec.encode_message(m, i) for i, m in enumerate(msgs))))
    assert [f.seq for f in frames] == list(range(len(msgs)))
    assert [P.parse(f.type, f.payload) for f in frames] == msgs
    raw = np.random.default_rng(0).integers(0, 65536, (185, 11), dtype=np.uint16)
    f = next(codec.FrameDecoder().feed(codec.encode_message(P.Events(1, 5, raw), 0)))
    got = P.parse(f.type, f.payload, n_features=11)
    assert got.first_index == 5 and np.array_equal(got.raw, raw)


@pytest.mark.parametrize("payload,match", [
    (b"\x05abc", "runs past the payload end"),
    (b"\x00\x00\x00\x00\x01", "after the last field|payload ends"),
])
def test_malformed_payloads_raise_protocol_error(payload, match):
    with pytest.raises(P.ProtocolError, match=match):
        P.Hello.unpack(payload) if payload.startswith(b"\x05") else P.SampleEnd.unpack(payload)


def test_events_length_is_checked():
    p = P.Events(1, 0, np.zeros((3, 11), np.uint16)).pack()
    with pytest.raises(P.ProtocolError, match="says 3 events of 11 features"):
        P.Events.unpack(p[:-2], 11)
    with pytest.raises(P.ProtocolError, match="EVENTS before HELLO"):
        P.parse(P.EVENTS, p)


def test_resynchronises_after_garbage_and_counts_it():
    good = [codec.encode_message(P.Heartbeat(i), i) for i in range(5)]
    corrupted = bytearray(good[2])
    corrupted[5] ^= 0x40
    stream = b"\x00" + b"\x13\x37noise" + b"\x00" + good[0] + good[1] + bytes(corrupted) + good[3][:4] + b"\x00" + good[4]
    dec = codec.FrameDecoder()
    got = [P.parse(f.type, f.payload).uptime_ms for f in dec.feed(stream)]
    assert got == [0, 1, 4]
    assert dec.stats.bad_frames == 3 and dec.stats.crc_errors + dec.stats.cobs_errors >= 2


def test_memory_stays_bounded_under_a_flood():
    dec = codec.FrameDecoder()
    rng = np.random.default_rng(3)
    flood = rng.integers(1, 256, 2_000_000, dtype=np.uint8).tobytes()  # no delimiter at all
    for i in range(0, len(flood), 65536):
        assert list(dec.feed(flood[i:i + 65536])) == []
        assert dec.buffered <= codec.MAX_ENCODED
    assert dec.stats.oversize == 1
    # and it recovers at the next delimiter
    assert len(list(dec.feed(b"\x00" + codec.encode_message(P.Heartbeat(1), 0)))) == 1


def test_split_anywhere():
    wire = b"".join(codec.encode_message(P.Heartbeat(i), i) for i in range(50))
    rng = np.random.default_rng(4)
    dec = codec.FrameDecoder()
    cuts = np.sort(rng.integers(0, len(wire), 60))
    out = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(wire)]):
        out += list(dec.feed(wire[a:b]))
    assert [f.seq for f in out] == list(range(50))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 255), st.integers(0, 65535))
def test_any_payload_round_trips(payload, msg_type, seq):
    frames = list(codec.FrameDecoder().feed(codec.encode_frame(msg_type, seq, payload)))
    assert len(frames) == 1 and frames[0].payload == payload and frames[0].type == msg_type and frames[0].seq == seq


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash(data):
    dec = codec.FrameDecoder()
    for f in dec.feed(data):
        assert len(f.payload) <= P.MAX_PAYLOAD
    assert dec.buffered <= codec.MAX_ENCODED
