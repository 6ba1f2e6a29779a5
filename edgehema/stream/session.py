"""The host's view of a wire session: frames in, samples out (pure logic, no I/O).

``WireSession.feed(bytes)`` runs the frame decoder and turns frames into what the rest of the
runtime needs: the instrument's feature scaling (HELLO), an open sample with its metadata
(SAMPLE_BEGIN), float32 event batches (EVENTS), and the sample's end with everything that went
wrong on the way (PROTOCOL.md section 4). Events of one sample can never land in another: every
batch carries the sample's tag and is checked against the open sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator

import numpy as np

from firmware_bridge import codec
from firmware_bridge import protocol as P


@dataclass
class OpenSample:
    tag: int
    sample_id: str
    species: str
    dilution: float
    started_unix_us: int
    features: tuple[str, ...]
    profile: str
    instrument_id: str
    received: int = 0
    flags: dict[str, str] = field(default_factory=dict)
    frames: list[bytes] = field(default_factory=list)  # every frame of the sample, as on the wire

    def flag(self, code: str, text: str) -> None:
        self.flags.setdefault(code, text)


@dataclass
class SampleOpened:
    sample: OpenSample


@dataclass
class EventBatch:
    sample: OpenSample
    events: np.ndarray  # float32 (count, n_features), physical units


@dataclass
class SampleClosed:
    sample: OpenSample
    complete: bool
    event_total: int | None = None
    elapsed_us: int | None = None
    volume_nl: int | None = None

    def started_at(self) -> str:
        return datetime.fromtimestamp(self.sample.started_unix_us / 1e6, tz=timezone.utc).isoformat()

    def ended_at(self) -> str | None:
        if self.elapsed_us is None:
            return None
        start = datetime.fromtimestamp(self.sample.started_unix_us / 1e6, tz=timezone.utc)
        return (start + timedelta(microseconds=self.elapsed_us)).isoformat()


@dataclass
class Notice:
    """Something worth a log line that is not about a sample (STATUS, a new HELLO, protocol errors)."""

    text: str


class WireSession:
    def __init__(self) -> None:
        self.decoder = codec.FrameDecoder()
        self.hello: P.Hello | None = None
        self.hello_frame: bytes | None = None
        self.scales: np.ndarray | None = None
        self.offsets: np.ndarray | None = None
        self.open: OpenSample | None = None
        self.expected_seq: int | None = None
        self.frames_seen = 0
        self.events_seen = 0
        self._bad_seen = 0

    def feed(self, data: bytes) -> Iterator[object]:
        for frame in self.decoder.feed(data):
            yield from self._frame(frame)
        yield from self._check_corruption()

    def disconnect(self) -> Iterator[object]:
        """The link went away: an open sample can no longer complete."""
        if self.open is not None:
            s, self.open = self.open, None
            s.flag("incomplete", "the link was lost before SAMPLE_END")
            yield SampleClosed(s, complete=False)
        self.expected_seq = None
        self.decoder = codec.FrameDecoder()
        self._bad_seen = 0

    # ------------------------------------------------------------------
    def _check_corruption(self) -> Iterator[object]:
        bad = self.decoder.stats.bad_frames
        if bad > self._bad_seen:
            n = bad - self._bad_seen
            self._bad_seen = bad
            if self.open is not None:
                self.open.flag("corrupted_frames", f"{n} or more frames dropped for CRC/COBS/length errors")
            yield Notice(f"{n} corrupted frame(s) dropped")

    def _frame(self, frame: codec.Frame) -> Iterator[object]:
        self.frames_seen += 1
        yield from self._check_corruption()
        wire = codec.encode_frame(frame.type, frame.seq, frame.payload, frame.version)
        if frame.type == P.HELLO:
            yield from self._hello(frame, wire)
            return
        if self.expected_seq is not None and frame.seq != self.expected_seq:
            lost = (frame.seq - self.expected_seq) % 65536
            if self.open is not None:
                self.open.flag("sequence_gap", f"{lost} frame(s) missing before frame {frame.seq}")
            yield Notice(f"sequence gap: {lost} frame(s) missing before frame {frame.seq}")
        self.expected_seq = (frame.seq + 1) % 65536
        try:
            msg = P.parse(frame.type, frame.payload, len(self.hello.features) if self.hello else None)
        except P.ProtocolError as exc:
            if self.open is not None and frame.type in (P.EVENTS, P.SAMPLE_END, P.SAMPLE_BEGIN):
                self.open.flag("corrupted_frames", f"unreadable {P.NAMES.get(frame.type, hex(frame.type))}: {exc}")
            yield Notice(f"frame {frame.seq}: {exc}")
            return
        if isinstance(msg, P.SampleBegin):
            yield from self._begin(msg, wire)
        elif isinstance(msg, P.Events):
            yield from self._events(msg, wire)
        elif isinstance(msg, P.SampleEnd):
            yield from self._end(msg, wire)
        elif isinstance(msg, P.Status):
            yield Notice(f"instrument status {msg.code} ({['info', 'warning', 'error'][min(msg.severity, 2)]}): {msg.text}")

    def _hello(self, frame: codec.Frame, wire: bytes) -> Iterator[object]:
        try:
            hello = P.Hello.unpack(frame.payload)
        except P.ProtocolError as exc:
            yield Notice(f"unreadable HELLO: {exc}")
            return
        if self.open is not None:  # the instrument restarted mid-sample
            s, self.open = self.open, None
            s.flag("incomplete", "the instrument restarted (HELLO) before SAMPLE_END")
            yield SampleClosed(s, complete=False)
        self.hello, self.hello_frame = hello, wire
        self.scales, self.offsets = hello.scales, hello.offsets
        self.expected_seq = (frame.seq + 1) % 65536
        yield Notice(f"HELLO from {hello.instrument_id} firmware {hello.firmware}, profile {hello.profile}, "
                     f"{len(hello.features)} features")

    def _begin(self, msg: P.SampleBegin, wire: bytes) -> Iterator[object]:
        if self.hello is None:
            yield Notice(f"SAMPLE_BEGIN {msg.tag} before HELLO: ignored until the instrument introduces itself")
            return
        if self.open is not None:
            s, self.open = self.open, None
            s.flag("incomplete", f"sample {msg.tag} began before SAMPLE_END of this one")
            yield SampleClosed(s, complete=False)
        self.open = OpenSample(
            msg.tag, msg.sample_id, msg.species, msg.dilution, msg.started_unix_us,
            tuple(f.name for f in self.hello.features), self.hello.profile, self.hello.instrument_id,
        )
        self.open.frames += [self.hello_frame, wire]
        yield SampleOpened(self.open)

    def _events(self, msg: P.Events, wire: bytes) -> Iterator[object]:
        s = self.open
        if s is None and self.hello is not None:
            # SAMPLE_BEGIN was lost: keep the events under their tag rather than drop a sample.
            s = self.open = OpenSample(msg.tag, f"tag-{msg.tag}", "", 0.0, 0, tuple(f.name for f in self.hello.features),
                                       self.hello.profile, self.hello.instrument_id)
            s.flag("missing_sample_begin", "SAMPLE_BEGIN was not received: sample id, species and dilution unknown")
            s.frames.append(self.hello_frame)
            yield SampleOpened(s)
        if s is None or msg.tag != s.tag:
            yield Notice(f"EVENTS for sample {msg.tag} while {'no sample' if s is None else f'sample {s.tag}'} is open: dropped")
            if s is not None:
                s.flag("foreign_events", f"events of sample {msg.tag} arrived inside this sample")
            return
        if msg.first_index != s.received:
            s.flag("event_index_gap", f"batch starts at event {msg.first_index}, {s.received} received before it")
        s.frames.append(wire)
        events = msg.raw.astype(np.float32) * self.scales + self.offsets
        s.received += msg.count
        self.events_seen += msg.count
        yield EventBatch(s, events)

    def _end(self, msg: P.SampleEnd, wire: bytes) -> Iterator[object]:
        s = self.open
        if s is None or msg.tag != s.tag:
            yield Notice(f"SAMPLE_END for sample {msg.tag} that is not open: ignored")
            return
        s.frames.append(wire)
        if msg.event_total != s.received:
            s.flag("event_total_mismatch", f"instrument sent {msg.event_total} events, {s.received} arrived")
        if msg.status == P.END_ABORTED:
            s.flag("aborted_by_instrument", "the instrument aborted the sample")
        self.open = None
        yield SampleClosed(s, complete=True, event_total=msg.event_total, elapsed_us=msg.elapsed_us,
                           volume_nl=msg.volume_nl)
