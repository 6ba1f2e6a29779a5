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
from typing import Callable, Iterator

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
    #: Where the sample id comes from: ``instrument`` (its SAMPLE_BEGIN) or ``host`` (``tag-N``, made
    #: up here because SAMPLE_BEGIN never arrived): such a result never goes to a LIS as it is.
    id_source: str = "instrument"

    def flag(self, code: str, text: str) -> None:
        self.flags.setdefault(code, text)


#: ``resume(instrument_id, tag, features)``: the host's own open sample of that tag, if it had one
#: when it stopped; frames of a sample that is not open then continue it instead of opening a
#: sample without SAMPLE_BEGIN.
Resume = Callable[[str, int, tuple], "OpenSample | None"]


@dataclass
class SampleOpened:
    sample: OpenSample


@dataclass
class SampleResumed:
    """A sample the host had open when it stopped (or lost the link) goes on: the instrument sends its
    remaining frames without a new SAMPLE_BEGIN. ``sample`` is the one the host had, events so far
    included, so that the continuation is counted with it, once."""

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
    """Something worth a log line that is not about a sample (STATUS, a new HELLO, protocol errors).

    ``kind`` groups notices that can repeat many times a second (corrupted frames under a garbage
    flood, frames before HELLO), so that a log can count them instead of printing each."""

    text: str
    kind: str = ""


#: Frames held while waiting for HELLO, at most (a minute of a fast instrument); past that the
#: held samples are reported undecoded so that memory stays bounded.
MAX_WAITING_BYTES = 32 * 1024 * 1024


class WireSession:
    """``fallback_hello``: (HELLO frame, when received) of the instrument's last session, used to
    decode frames that arrive before this session's HELLO (samples flagged ``hello_missing`` until a
    HELLO that matches it arrives). Without it such frames wait for the HELLO; if none comes, their
    samples are reported ``no_hello`` with their frames, so a sample is never dropped."""

    def __init__(self, fallback_hello: tuple[bytes, str] | None = None, resume: Resume | None = None) -> None:
        self.decoder = codec.FrameDecoder()
        self.resume = resume
        self.fallback_hello = fallback_hello
        self.hello: P.Hello | None = None
        self.hello_frame: bytes | None = None
        self.hello_assumed = False  # decoding with fallback_hello, not yet confirmed
        self.hello_requested = False  # the host asked: the next HELLO is a reply, not a restart
        self._waiting: list[tuple[codec.Frame, bytes]] = []
        self._waiting_bytes = 0
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

    def request_hello(self) -> None:
        """The host sent HELLO_REQUEST: a HELLO that follows answers it (the instrument carries on)."""
        self.hello_requested = True

    @property
    def waiting_for_hello(self) -> bool:
        """Sample frames arrived that cannot be decoded (or only with an assumed HELLO)."""
        return bool(self._waiting) or self.hello_assumed

    def disconnect(self) -> Iterator[object]:
        """The link went away: an open sample can no longer complete."""
        yield from self._report_undecodable("the link was lost before the instrument sent HELLO")
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
            yield Notice(f"{n} corrupted frame(s) dropped", kind="corrupted")

    def _frame(self, frame: codec.Frame) -> Iterator[object]:
        self.frames_seen += 1
        yield from self._check_corruption()
        wire = codec.encode_frame(frame.type, frame.seq, frame.payload, frame.version)
        if frame.type == P.HELLO:
            yield from self._hello(frame, wire)
            return
        if self.hello is None and not self._assume_hello():
            yield from self._wait(frame, wire)
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
        reply, self.hello_requested = self.hello_requested, False
        same = self.hello is not None and _same_scaling(self.hello, hello)
        if self.open is not None and not (reply and same):  # the instrument restarted mid-sample
            s, self.open = self.open, None
            s.flag("incomplete", "the instrument restarted (HELLO) before SAMPLE_END")
            yield SampleClosed(s, complete=False)
        if self.open is not None and self.hello_assumed:
            # The HELLO we asked for confirms the scaling the open sample was decoded with.
            self.open.flags.pop("hello_missing", None)
        self.hello, self.hello_frame, self.hello_assumed = hello, wire, False
        self.scales, self.offsets = hello.scales, hello.offsets
        if not same:  # a HELLO that repeats the current one (a reply to our request) changes nothing
            yield Notice(f"HELLO from {hello.instrument_id} firmware {hello.firmware}, profile {hello.profile}, "
                         f"{len(hello.features)} features", kind="hello")
        # Frames that waited for this HELLO are decoded now, in their order, before what follows it.
        waiting, self._waiting, self._waiting_bytes = self._waiting, [], 0
        self.expected_seq = waiting[0][0].seq if waiting else None
        for f, _w in waiting:
            yield from self._frame(f)
        self.expected_seq = (frame.seq + 1) % 65536

    def _assume_hello(self) -> bool:
        """Decode with the instrument's last known HELLO (from an earlier session), flagged."""
        if self.fallback_hello is None:
            return False
        frames = list(codec.FrameDecoder().feed(b"\x00" + self.fallback_hello[0]))
        try:
            hello = P.Hello.unpack(frames[0].payload)
        except (IndexError, P.ProtocolError):
            self.fallback_hello = None
            return False
        self.hello, self.hello_frame, self.hello_assumed = hello, self.fallback_hello[0], True
        self.scales, self.offsets = hello.scales, hello.offsets
        return True

    def _wait(self, frame: codec.Frame, wire: bytes) -> Iterator[object]:
        self._waiting.append((frame, wire))
        self._waiting_bytes += len(wire)
        yield Notice(f"frame {frame.seq} ({P.NAMES.get(frame.type, hex(frame.type))}) before HELLO: held until the "
                     f"instrument introduces itself", kind="before_hello")
        if self._waiting_bytes > MAX_WAITING_BYTES:
            yield from self._report_undecodable(f"more than {MAX_WAITING_BYTES >> 20} MB arrived without a HELLO")

    def _report_undecodable(self, why: str) -> Iterator[object]:
        """Samples whose frames never got a HELLO: reported with their frames (archived), no events decoded."""
        waiting, self._waiting, self._waiting_bytes = self._waiting, [], 0
        samples: dict[int, OpenSample] = {}
        order: list[OpenSample] = []
        for frame, wire in waiting:
            tag, sample_id, species, dilution, started = None, None, "", 0.0, 0
            try:
                if frame.type == P.SAMPLE_BEGIN:
                    b = P.SampleBegin.unpack(frame.payload)
                    tag, sample_id, species, dilution, started = b.tag, b.sample_id, b.species, b.dilution, b.started_unix_us
                elif frame.type in (P.EVENTS, P.SAMPLE_END) and len(frame.payload) >= 4:
                    tag = int.from_bytes(frame.payload[:4], "little")
            except P.ProtocolError:
                tag = None
            if tag is None:
                continue
            s = samples.get(tag)
            if s is None:
                s = OpenSample(tag, sample_id or f"tag-{tag}", species, dilution, started, (), "", "",
                               id_source="instrument" if sample_id else "host")
                s.flag("no_hello", f"the instrument never introduced itself (no HELLO) during this sample: its frames "
                                   f"are archived but its events could not be decoded ({why})")
                samples[tag] = s
                order.append(s)
            if frame.type == P.EVENTS and len(frame.payload) >= 10:
                s.received += int.from_bytes(frame.payload[8:10], "little")
            s.frames.append(wire)
        for s in order:
            yield SampleOpened(s)
            yield SampleClosed(s, complete=False)

    def _begin(self, msg: P.SampleBegin, wire: bytes) -> Iterator[object]:
        if self.open is not None:
            s, self.open = self.open, None
            s.flag("incomplete", f"sample {msg.tag} began before SAMPLE_END of this one")
            yield SampleClosed(s, complete=False)
        self.open = OpenSample(
            msg.tag, msg.sample_id, msg.species, msg.dilution, msg.started_unix_us,
            tuple(f.name for f in self.hello.features), self.hello.profile, self.hello.instrument_id,
        )
        self.open.frames += [self.hello_frame, wire]
        self._flag_assumed(self.open)
        yield SampleOpened(self.open)

    def _resumed(self, tag: int) -> OpenSample | None:
        """The host's own sample of ``tag`` from before it stopped, now open again (or None)."""
        if self.resume is None or self.hello is None:
            return None
        s = self.resume(self.hello.instrument_id, tag, tuple(f.name for f in self.hello.features))
        if s is not None:
            self.open = s
            self._flag_assumed(s)
        return s

    def _events(self, msg: P.Events, wire: bytes) -> Iterator[object]:
        s = self.open
        if s is None and (s := self._resumed(msg.tag)) is not None:
            yield SampleResumed(s)
        elif s is None and self.hello is not None:
            # SAMPLE_BEGIN was lost: keep the events under their tag rather than drop a sample.
            s = self.open = OpenSample(msg.tag, f"tag-{msg.tag}", "", 0.0, 0, tuple(f.name for f in self.hello.features),
                                       self.hello.profile, self.hello.instrument_id, id_source="host")
            s.flag("missing_sample_begin", "SAMPLE_BEGIN was not received: sample id, species and dilution unknown")
            s.frames.append(self.hello_frame)
            self._flag_assumed(s)
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
        if s is None and (s := self._resumed(msg.tag)) is not None:
            yield SampleResumed(s)
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

    def _flag_assumed(self, s: OpenSample) -> None:
        if self.hello_assumed and self.fallback_hello is not None:
            s.flag("hello_missing", f"no HELLO on this connection: events decoded with the scaling of the instrument's "
                                    f"last HELLO (received {self.fallback_hello[1]}), unverified")


def _same_scaling(a: P.Hello, b: P.Hello) -> bool:
    return (a.instrument_id, a.profile, a.features) == (b.instrument_id, b.profile, b.features)


class SessionHandler:
    """What is done with each kind of item a session yields; :func:`dispatch` is the one place that
    tells them apart (the stream, replay and the restore at start each override what they need)."""

    def opened(self, sample: OpenSample) -> None: ...

    def resumed(self, sample: OpenSample) -> None: ...

    def events(self, sample: OpenSample, events: np.ndarray) -> None: ...

    def closed(self, item: SampleClosed) -> None: ...

    def notice(self, item: Notice) -> None: ...


def dispatch(items, handler: SessionHandler) -> None:
    """Hand each item of ``WireSession.feed`` / ``disconnect`` to ``handler``, in order."""
    for item in items:
        if isinstance(item, EventBatch):  # the most frequent first
            handler.events(item.sample, item.events)
        elif isinstance(item, SampleOpened):
            handler.opened(item.sample)
        elif isinstance(item, SampleResumed):
            handler.resumed(item.sample)
        elif isinstance(item, SampleClosed):
            handler.closed(item)
        elif isinstance(item, Notice):
            handler.notice(item)
