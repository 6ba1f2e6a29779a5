"""The C99 reference encoder, compiled here with the system C compiler, byte for byte against the Python codec."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import codec, protocol as P

C_DIR = Path(__file__).resolve().parents[1] / "firmware_bridge" / "c"
CC = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler on this machine (the reference encoder is checked where cc exists)")
    out = tmp_path_factory.mktemp("c") / "libehwire.so"
    cmd = [CC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-shared", "-fPIC",
           str(C_DIR / "ehwire.c"), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(out))
    lib.ehw_encode_frame.restype = ctypes.c_size_t
    lib.ehw_encode_frame.argtypes = [ctypes.c_uint8, ctypes.c_uint16, ctypes.c_char_p, ctypes.c_size_t,
                                     ctypes.c_char_p, ctypes.c_size_t]
    lib.ehw_crc32.restype = ctypes.c_uint32
    lib.ehw_crc32.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
    return lib


class Writer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("cap", ctypes.c_size_t), ("len", ctypes.c_size_t), ("overflow", ctypes.c_int)]


def c_frame(lib, msg_type, seq, payload: bytes) -> bytes:
    out = ctypes.create_string_buffer(8192)
    n = lib.ehw_encode_frame(msg_type, seq, payload, len(payload), out, len(out))
    assert n > 0
    return out.raw[:n]


def c_payload(lib, fn_name, *args) -> bytes:
    buf = ctypes.create_string_buffer(P.MAX_PAYLOAD)
    w = Writer()
    lib.ehw_writer_init(ctypes.byref(w), buf, len(buf))
    assert getattr(lib, fn_name)(ctypes.byref(w), *args) == 0
    return buf.raw[: w.len]


def test_no_dynamic_memory(lib, tmp_path):
    obj = tmp_path / "ehwire.o"
    subprocess.run([CC, "-std=c99", "-c", "-O2", str(C_DIR / "ehwire.c"), "-o", str(obj)], check=True)
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout
    for forbidden in ("malloc", "calloc", "realloc", "free", "printf"):
        assert forbidden not in undefined


def test_crc_matches(lib):
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 255, 4096):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert lib.ehw_crc32(0, data, n) == codec.crc32(data)


def test_random_frames_byte_for_byte(lib):
    rng = np.random.default_rng(1)
    for i in range(2000):
        n = int(rng.choice([0, 1, 2, 253, 254, 255, 507, 508, int(rng.integers(0, P.MAX_PAYLOAD + 1))]))
        # Some payloads rich in zeros, some with none: both COBS edge cases.
        kind = i % 3
        if kind == 0:
            payload = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif kind == 1:
            payload = rng.integers(1, 256, n, dtype=np.uint8).tobytes()
        else:
            payload = (rng.random(n) < 0.5).astype(np.uint8).tobytes()
        msg_type, seq = int(rng.integers(0, 256)), int(rng.integers(0, 65536))
        assert c_frame(lib, msg_type, seq, payload) == codec.encode_frame(msg_type, seq, payload), (i, n)


def test_message_builders_match(lib):
    names = (ctypes.c_char_p * 2)(b"fsc_lo_peak", b"ext_width")
    scales = (ctypes.c_float * 2)(1.0, 0.0078125)
    offsets = (ctypes.c_float * 2)(0.0, 0.0)
    hello = P.Hello("XN-01", "1.4.2", "optical-11", (P.FeatureScale("fsc_lo_peak", 1.0), P.FeatureScale("ext_width", 0.0078125)))
    assert c_payload(lib, "ehw_payload_hello", b"XN-01", b"1.4.2", b"optical-11", 2, names, scales, offsets) == hello.pack()
    begin = P.SampleBegin(7, "S-0007", "cat", 0, 625.0, 1_767_225_600_000_000)
    assert c_payload(lib, "ehw_payload_sample_begin", ctypes.c_uint32(7), b"S-0007", b"cat", ctypes.c_uint8(0),
                     ctypes.c_float(625.0), ctypes.c_uint64(1_767_225_600_000_000)) == begin.pack()
    raw = np.arange(3 * 11, dtype=np.uint16).reshape(3, 11) * 997
    ev = P.Events(7, 1200, raw)
    c_raw = np.ascontiguousarray(raw).ctypes.data_as(ctypes.POINTER(ctypes.c_uint16))
    assert c_payload(lib, "ehw_payload_events", ctypes.c_uint32(7), ctypes.c_uint32(1200), ctypes.c_uint16(3),
                     ctypes.c_uint8(11), c_raw) == ev.pack()
    end = P.SampleEnd(7, 150_000, 24_822_249, 12_411, 0)
    assert c_payload(lib, "ehw_payload_sample_end", ctypes.c_uint32(7), ctypes.c_uint32(150_000),
                     ctypes.c_uint64(24_822_249), ctypes.c_uint32(12_411), ctypes.c_uint8(0)) == end.pack()
    assert c_payload(lib, "ehw_payload_heartbeat", ctypes.c_uint32(123456), ctypes.c_uint8(1)) == P.Heartbeat(123456, 1).pack()
    assert c_payload(lib, "ehw_payload_status", ctypes.c_uint8(2), ctypes.c_uint16(17), b"laser power low") == \
        P.Status(2, 17, "laser power low").pack()
    # And the whole frame of an EVENTS message decodes on the host.
    frame = c_frame(lib, P.EVENTS, 65535, ev.pack())
    decoded = list(codec.FrameDecoder().feed(frame))
    assert len(decoded) == 1 and decoded[0].seq == 65535
    np.testing.assert_array_equal(P.Events.unpack(decoded[0].payload, 11).raw, raw)


def test_oversize_and_short_buffers_refused(lib):
    out = ctypes.create_string_buffer(16)
    assert lib.ehw_encode_frame(1, 0, b"x" * 100, 100, out, len(out)) == 0
    big = ctypes.create_string_buffer(10000)
    assert lib.ehw_encode_frame(1, 0, b"x" * (P.MAX_PAYLOAD + 1), P.MAX_PAYLOAD + 1, big, len(big)) == 0
