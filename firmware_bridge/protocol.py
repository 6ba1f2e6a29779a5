"""edgehema wire protocol v1: message types and their payloads (PROTOCOL.md is the specification).

Every multi-byte field is little-endian. Strings are ``str8``: one length byte, then that many
UTF-8 bytes. Events travel as unsigned 16-bit fixed-point features; HELLO gives each feature's
``scale`` and ``offset`` (physical value = raw x scale + offset).

This module imports nothing of edgehema, so firmware tooling can use it alone.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, field
from typing import ClassVar

import numpy as np

from .errors import ProtocolError

VERSION = 1
MAX_PAYLOAD = 4096

HELLO, SAMPLE_BEGIN, EVENTS, SAMPLE_END, HEARTBEAT, STATUS = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
ACK, RESEND, HELLO_REQUEST = 0x81, 0x82, 0x83
NAMES = {HELLO: "HELLO", SAMPLE_BEGIN: "SAMPLE_BEGIN", EVENTS: "EVENTS", SAMPLE_END: "SAMPLE_END",
         HEARTBEAT: "HEARTBEAT", STATUS: "STATUS", ACK: "ACK", RESEND: "RESEND",
         HELLO_REQUEST: "HELLO_REQUEST"}

END_COMPLETE, END_ABORTED = 0, 1
ACK_CLEAN, ACK_FLAGGED, ACK_REJECTED = 0, 1, 2
EVENTS_HEADER = struct.Struct("<IIH")  # sample tag, index of the first event, event count


def max_events_per_frame(n_features: int) -> int:
    return (MAX_PAYLOAD - EVENTS_HEADER.size) // (2 * n_features)




@dataclass(frozen=True)
class FeatureScale:
    name: str
    scale: float
    offset: float = 0.0


@dataclass(frozen=True)
class Hello:
    instrument_id: str
    firmware: str
    profile: str
    features: tuple[FeatureScale, ...]
    type = HELLO

    def pack(self) -> bytes:
        out = _str8(self.instrument_id) + _str8(self.firmware) + _str8(self.profile) + bytes([len(self.features)])
        for f in self.features:
            out += _str8(f.name) + struct.pack("<ff", f.scale, f.offset)
        return out

    @classmethod
    def unpack(cls, p: bytes) -> "Hello":
        r = _Reader(p)
        iid, fw, prof, n = r.str8(), r.str8(), r.str8(), r.u8()
        feats = tuple(FeatureScale(r.str8(), *r.take("<ff")) for _ in range(n))
        r.end()
        return cls(iid, fw, prof, feats)

    @property
    def scales(self) -> np.ndarray:
        return np.array([f.scale for f in self.features], dtype=np.float32)

    @property
    def offsets(self) -> np.ndarray:
        return np.array([f.offset for f in self.features], dtype=np.float32)


@dataclass(frozen=True)
class SampleBegin:
    tag: int
    sample_id: str
    species: str
    mode: int
    dilution: float
    started_unix_us: int
    type = SAMPLE_BEGIN

    def pack(self) -> bytes:
        return (struct.pack("<I", self.tag) + _str8(self.sample_id) + _str8(self.species)
                + struct.pack("<BfQ", self.mode, self.dilution, self.started_unix_us))

    @classmethod
    def unpack(cls, p: bytes) -> "SampleBegin":
        r = _Reader(p)
        tag = r.take("<I")[0]
        sid, species = r.str8(), r.str8()
        mode, dilution, started = r.take("<BfQ")
        r.end()
        return cls(tag, sid, species, mode, dilution, started)


@dataclass(frozen=True)
class Events:
    tag: int
    first_index: int
    raw: np.ndarray = field(repr=False)  # (count, n_features) uint16
    type = EVENTS

    def pack(self) -> bytes:
        raw = np.ascontiguousarray(self.raw, dtype="<u2")
        return EVENTS_HEADER.pack(self.tag, self.first_index, raw.shape[0]) + raw.tobytes()

    @classmethod
    def unpack(cls, p: bytes, n_features: int) -> "Events":
        if len(p) < EVENTS_HEADER.size:
            raise ProtocolError(f"EVENTS payload of {len(p)} bytes is shorter than its {EVENTS_HEADER.size}-byte header")
        tag, first, count = EVENTS_HEADER.unpack_from(p)
        want = EVENTS_HEADER.size + 2 * count * n_features
        if len(p) != want:
            raise ProtocolError(f"EVENTS says {count} events of {n_features} features ({want} bytes), payload has {len(p)}")
        raw = np.frombuffer(p, dtype="<u2", offset=EVENTS_HEADER.size).reshape(count, n_features)
        return cls(tag, first, raw)

    @property
    def count(self) -> int:
        return int(self.raw.shape[0])


class _FixedStruct:
    """A message whose payload is one fixed struct of its fields, in declaration order."""

    FORMAT: ClassVar[str]

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, *astuple(self))

    @classmethod
    def unpack(cls, p: bytes):
        r = _Reader(p)
        values = r.take(cls.FORMAT)
        r.end()
        return cls(*values)


@dataclass(frozen=True)
class SampleEnd(_FixedStruct):
    tag: int
    event_total: int
    elapsed_us: int
    volume_nl: int
    status: int = END_COMPLETE
    type = SAMPLE_END
    FORMAT = "<IIQIB"


@dataclass(frozen=True)
class Heartbeat(_FixedStruct):
    uptime_ms: int
    state: int = 0
    type = HEARTBEAT
    FORMAT = "<IB"


@dataclass(frozen=True)
class Status:
    severity: int
    code: int
    text: str
    type = STATUS

    def pack(self) -> bytes:
        return struct.pack("<BH", self.severity, self.code) + _str8(self.text)

    @classmethod
    def unpack(cls, p: bytes) -> "Status":
        r = _Reader(p)
        sev, code = r.take("<BH")
        text = r.str8()
        r.end()
        return cls(sev, code, text)


@dataclass(frozen=True)
class Ack(_FixedStruct):
    tag: int
    result: int
    type = ACK
    FORMAT = "<IB"


@dataclass(frozen=True)
class Resend(_FixedStruct):
    tag: int
    type = RESEND
    FORMAT = "<I"


SIMPLE = {HELLO: Hello, SAMPLE_BEGIN: SampleBegin, SAMPLE_END: SampleEnd, HEARTBEAT: Heartbeat, STATUS: Status,
          ACK: Ack, RESEND: Resend}


def parse(msg_type: int, payload: bytes, n_features: int | None = None):
    """The message object of a payload. EVENTS needs the feature count from HELLO."""
    if msg_type == EVENTS:
        if n_features is None:
            raise ProtocolError("EVENTS before HELLO: the feature count is unknown")
        return Events.unpack(payload, n_features)
    cls = SIMPLE.get(msg_type)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{msg_type:02x}")
    return cls.unpack(payload)


def _str8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        raise ProtocolError(f"string of {len(b)} bytes does not fit a str8 field")
    return bytes([len(b)]) + b


class _Reader:
    def __init__(self, p: bytes):
        self.p = p
        self.i = 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.i + size > len(self.p):
            raise ProtocolError(f"payload ends at byte {len(self.p)}, field needs bytes {self.i}-{self.i + size - 1}")
        v = struct.unpack_from(fmt, self.p, self.i)
        self.i += size
        return v

    def u8(self) -> int:
        return self.take("<B")[0]

    def str8(self) -> str:
        n = self.u8()
        if self.i + n > len(self.p):
            raise ProtocolError(f"string of {n} bytes runs past the payload end (byte {len(self.p)})")
        b = self.p[self.i : self.i + n]
        self.i += n
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"string at byte {self.i - n} is not UTF-8") from None

    def end(self) -> None:
        if self.i != len(self.p):
            raise ProtocolError(f"{len(self.p) - self.i} unexpected bytes after the last field")
