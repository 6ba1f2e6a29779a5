"""Framing: header + payload + CRC-32, COBS-encoded, 0x00-delimited (PROTOCOL.md, section 2).

``encode_frame`` builds one wire frame. ``FrameDecoder`` is incremental: feed it bytes in any
chunks and it yields complete, CRC-checked frames; garbage, truncated and corrupted frames are
counted and skipped, and it resynchronises on the next 0x00. Its buffer never holds more than one
maximal frame, however much garbage arrives.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator

from cobs import cobs

from .protocol import MAX_PAYLOAD, VERSION

HEADER = struct.Struct("<BBHH")  # version, type, sequence, payload length
CRC = struct.Struct("<I")
DELIMITER = b"\x00"
#: Largest COBS-encoded frame (without delimiter): header + payload + CRC plus one code byte per 254.
MAX_ENCODED = HEADER.size + MAX_PAYLOAD + CRC.size + (HEADER.size + MAX_PAYLOAD + CRC.size) // 254 + 2


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF), as zlib and Ethernet."""
    return zlib.crc32(data) & 0xFFFFFFFF


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
            raw = cobs.decode(chunk)
        except cobs.DecodeError:
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
