"""Framing: header + payload + CRC-32, COBS-encoded, 0x00-delimited (PROTOCOL.md, section 2).

``encode_frame`` builds one wire frame. ``FrameDecoder`` is incremental: feed it bytes in any
chunks and it yields complete, CRC-checked frames; garbage, truncated and corrupted frames are
counted and skipped, and it resynchronises on the next 0x00. Its buffer never holds more than one
maximal frame, however much garbage arrives.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from cobs import cobs

from .errors import CobsError
from .protocol import MAX_PAYLOAD, VERSION

HEADER = struct.Struct("<BBHH")  # version, type, sequence, payload length
CRC = struct.Struct("<I")
DELIMITER = b"\x00"
#: Largest COBS-encoded frame (without delimiter): header + payload + CRC plus one code byte per 254.
MAX_ENCODED = HEADER.size + MAX_PAYLOAD + CRC.size + (HEADER.size + MAX_PAYLOAD + CRC.size) // 254 + 2


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF), as zlib and Ethernet."""
    return zlib.crc32(data) & 0xFFFFFFFF




def cobs_decode_walk(enc: bytes) -> bytes:
    """COBS decoding without a C extension, within about 10x of the C extension's time on real
    frames (``cobs``' own pure-Python fallback takes about 100x; benchmarks/bench_codec.py): Python
    only steps from code byte to code byte (one step per block, not per byte), numpy then turns the
    code bytes into zeros.

    ``enc`` is one frame as cut at its 0x00 delimiter, so it holds no zero byte."""
    n = len(enc)
    positions = []
    add = positions.append
    i = 0
    while i < n:
        add(i)
        i += enc[i]
    if i != n or not n:
        raise CobsError(f"the code bytes of {n} bytes do not end at the frame's end")
    a = np.frombuffer(enc, np.uint8)
    codes = np.asarray(positions, np.intp)
    later = codes[1:]
    after_full_block = a[codes[:-1]] == 0xFF  # a 254-byte block is not followed by a zero
    out = a.copy()
    if not after_full_block.any():
        out[later] = 0
        return out[1:].tobytes()
    out[later[~after_full_block]] = 0
    keep = np.ones(n, bool)
    keep[0] = False
    keep[later[after_full_block]] = False
    return out[keep].tobytes()


def _cobs_decode_c(enc: bytes) -> bytes:
    try:
        return cobs.decode(enc)
    except cobs.DecodeError as exc:
        raise CobsError(str(exc)) from None


#: Which COBS decoder runs: ``c`` (the ``cobs`` package's C extension, where it is compiled for this
#: machine), ``walk`` (ours above), or ``auto`` (the C extension if present). Env: EHWIRE_COBS.
COBS_DECODER = os.environ.get("EHWIRE_COBS", "auto").strip().lower()


def cobs_decoder():
    """(name, function) of the COBS decoder in use."""
    if COBS_DECODER == "walk" or (COBS_DECODER == "auto" and not getattr(cobs, "_using_extension", False)):
        return "numpy block walk (no C extension)", cobs_decode_walk
    if not getattr(cobs, "_using_extension", False):
        return "cobs pure Python (C extension missing)", _cobs_decode_c
    return "cobs C extension", _cobs_decode_c


def decode_speed(megabytes: float = 1.0) -> tuple[str, float]:
    """(decoder, MB/s) measured now on a frame stream like an instrument's (events with 10 % zero
    bytes): what ``edgehema info`` and ``selftest`` report."""
    import time

    rng = np.random.default_rng(0)
    raw = rng.integers(1, 256, size=(int(megabytes * 1e6) // 4000, 4000), dtype=np.uint8)
    raw[rng.random(raw.shape) < 0.1] = 0
    frames = [cobs.encode(r.tobytes()) for r in raw]
    name, decode = cobs_decoder()
    t0 = time.perf_counter()
    for f in frames:
        decode(f)
    seconds = time.perf_counter() - t0
    return name, sum(len(f) for f in frames) / 1e6 / max(seconds, 1e-9)


def encode_frame(msg_type: int, seq: int, payload: bytes, version: int = VERSION) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    body = HEADER.pack(version, msg_type, seq & 0xFFFF, len(payload)) + payload
    return cobs.encode(body + CRC.pack(crc32(body))) + DELIMITER


def encode_message(message, seq: int) -> bytes:
    return encode_frame(message.type, seq, message.pack())


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes
    version: int = VERSION


@dataclass
class DecodeStats:
    frames: int = 0
    bytes: int = 0
    crc_errors: int = 0
    cobs_errors: int = 0
    length_errors: int = 0
    version_errors: int = 0
    oversize: int = 0
    garbage_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def bad_frames(self) -> int:
        return self.crc_errors + self.cobs_errors + self.length_errors + self.version_errors + self.oversize


class FrameDecoder:
    """Bytes in, frames out. Bounded memory: at most ``MAX_ENCODED`` bytes are buffered."""

    MAX_ERRORS_KEPT = 32

    def __init__(self) -> None:
        self._decode_cobs = cobs_decoder()[1]
        self._buf = bytearray()
        self._skipping = False  # inside an oversize run: drop until the next delimiter
        self.stats = DecodeStats()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self.stats.bytes += len(data)
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            if end < 0:
                self._append(data[start:])
                return
            self._append(data[start:end])
            chunk, skipping = bytes(self._buf), self._skipping
            self._buf.clear()
            self._skipping = False
            start = end + 1
            if skipping:
                continue
            if chunk:
                frame = self._decode(chunk)
                if frame is not None:
                    yield frame

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _append(self, part: bytes) -> None:
        if self._skipping:
            self.stats.garbage_bytes += len(part)
            return
        self._buf += part
        if len(self._buf) > MAX_ENCODED:
            self.stats.oversize += 1
            self.stats.garbage_bytes += len(self._buf)
            self._note(f"frame longer than {MAX_ENCODED} bytes dropped")
            self._buf.clear()
            self._skipping = True

    def _decode(self, chunk: bytes) -> Frame | None:
        try:
            raw = self._decode_cobs(chunk)
        except CobsError:
            self.stats.cobs_errors += 1
            self.stats.garbage_bytes += len(chunk) + 1
            self._note(f"{len(chunk)} bytes are not valid COBS")
            return None
        if len(raw) < HEADER.size + CRC.size:
            self.stats.length_errors += 1
            self.stats.garbage_bytes += len(chunk) + 1
            self._note(f"{len(raw)}-byte frame is shorter than header and CRC")
            return None
        body, (crc,) = raw[:-CRC.size], CRC.unpack(raw[-CRC.size:])
        if crc32(body) != crc:
            self.stats.crc_errors += 1
            self._note(f"CRC mismatch in a {len(raw)}-byte frame")
            return None
        version, msg_type, seq, length = HEADER.unpack_from(body)
        if version != VERSION:
            self.stats.version_errors += 1
            self._note(f"protocol version {version} (this host speaks {VERSION})")
            return None
        if length != len(body) - HEADER.size:
            self.stats.length_errors += 1
            self._note(f"header says {length} payload bytes, frame carries {len(body) - HEADER.size}")
            return None
        self.stats.frames += 1
        return Frame(msg_type, seq, body[HEADER.size :], version)

    def _note(self, text: str) -> None:
        if len(self.stats.errors) < self.MAX_ERRORS_KEPT:
            self.stats.errors.append(text)
