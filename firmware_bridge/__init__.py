"""firmware_bridge: the link between the instrument's firmware and the host.

* ``PROTOCOL.md``: the wire protocol v1, byte by byte.
* :mod:`firmware_bridge.protocol`: message types and payloads.
* :mod:`firmware_bridge.codec`: framing (COBS, CRC-32) and the incremental decoder.
* ``c/ehwire.h``, ``c/ehwire.c``: the C99 reference encoder for the firmware side.

This package imports nothing of edgehema, so firmware engineers can use it alone.
"""

from .errors import CobsError, ProtocolError, WireError
from .codec import DecodeStats, Frame, FrameDecoder, crc32, encode_frame, encode_message
from .protocol import (
    ACK,
    EVENTS,
    HEARTBEAT,
    HELLO,
    MAX_PAYLOAD,
    RESEND,
    SAMPLE_BEGIN,
    SAMPLE_END,
    STATUS,
    VERSION,
    Ack,
    Events,
    FeatureScale,
    Heartbeat,
    Hello,
    ProtocolError,
    Resend,
    SampleBegin,
    SampleEnd,
    Status,
    parse,
)

__all__ = [
    "ACK", "EVENTS", "HEARTBEAT", "HELLO", "MAX_PAYLOAD", "RESEND", "SAMPLE_BEGIN", "SAMPLE_END", "STATUS",
    "VERSION", "Ack", "CobsError", "DecodeStats", "Events", "FeatureScale", "Frame", "FrameDecoder", "Heartbeat", "Hello",
    "ProtocolError", "Resend", "SampleBegin", "SampleEnd", "Status", "crc32", "encode_frame", "encode_message",
    "WireError", "parse",
]
