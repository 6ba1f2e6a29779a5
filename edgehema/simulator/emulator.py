"""``edgehema emulate``: an instrument on a wire, streaming simulator samples, with fault injection.

The emulator speaks the instrument side of the protocol (firmware_bridge/PROTOCOL.md) exactly as
firmware would: HELLO, then per sample SAMPLE_BEGIN, EVENTS batches paced at the chosen event rate,
SAMPLE_END, and HEARTBEATs. Faults are injected into chosen samples so that a test (or an engineer)
knows which samples must come out flagged:

=============  ==============================================================================
fault          what happens to the sample
=============  ==============================================================================
bitflip        one bit of one EVENTS frame flips (CRC failure, the frame is lost)
drop           one EVENTS frame is never sent (sequence gap)
truncate       one EVENTS frame is cut short
total          SAMPLE_END reports one event more than was sent
disconnect     the link closes mid-sample; the emulator waits for the host to reconnect
reboot         the instrument restarts mid-sample (HELLO again, sequence from 0)
=============  ==============================================================================
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from firmware_bridge import codec
from firmware_bridge import protocol as P

from edgehema.exceptions import SimulationError
from edgehema.profiles import Profile, get_profile
from edgehema.simulator import InstrumentSettings, SampleSimulator

FAULTS = ("bitflip", "drop", "truncate", "total", "disconnect", "reboot")
FIRMWARE = "edgehema-emulator 1.0"


def feature_scales(profile: Profile) -> tuple[P.FeatureScale, ...]:
    """Fixed-point scaling per feature: peaks in counts, areas in 32 counts x us, widths in 1/128 us."""
    out = []
    for f in profile.features:
        if f.measure == "peak":
            scale = 1.0
        elif f.measure == "area":
            scale = 32.0
        elif f.measure == "width" and f.range[1] <= 512:
            scale = 1.0 / 128.0
        else:
            scale = max(f.range[1] / 65535.0, 1e-6)
        out.append(P.FeatureScale(f.name, float(np.float32(scale)), 0.0))
    return tuple(out)


def parse_faults(specs: list[str], samples: int | None = None) -> dict[int, set[str]]:
    """``KIND[@SAMPLE]`` (1-based sample number, default 2) -> {sample index: {kinds}}.

    With ``samples``, a fault aimed past the last sample is refused (it would inject nothing)."""
    out: dict[int, set[str]] = {}
    for spec in specs:
        kind, _, at = spec.partition("@")
        if kind not in FAULTS:
            raise SimulationError(f"unknown fault {kind!r} (known: {', '.join(FAULTS)})")
        try:
            n = int(at) if at else 2
        except ValueError:
            raise SimulationError(f"fault {spec!r}: the sample after @ must be a number") from None
        if n < 1:
            raise SimulationError(f"fault {spec!r}: samples are numbered from 1")
        if samples is not None and n > samples:
            raise SimulationError(f"fault {spec!r}: there are only {samples} sample(s) (--samples), so it would "
                                  f"inject nothing")
        out.setdefault(n - 1, set()).add(kind)
    return out


@dataclass
class Chunk:
    data: bytes
    events: int = 0  # events carried, for pacing
    disconnect: bool = False  # close the link after this chunk


@dataclass
class InstrumentEmulator:
    species: str = "human"
    samples: int = 3
    events: int = 150_000
    seed: int = 0
    faults: dict[int, set[str]] = field(default_factory=dict)
    instrument_id: str = "EMU-0001"
    profile: str = "optical-11"
    pathology: str | None = None
    truths: list[dict] = field(default_factory=list)  # filled by prepare(), before the first byte

    def __post_init__(self) -> None:
        self._profile = get_profile(self.profile)
        self._scales = feature_scales(self._profile)
        self._scale = np.array([f.scale for f in self._scales], dtype=np.float64)
        self._seq = 0
        self._rng = np.random.default_rng(self.seed + 77)
        self._per_frame = P.max_events_per_frame(self._profile.n_features)
        self._host = codec.FrameDecoder()
        #: What the host sent: (message type name, tag or None), for tests and for an engineer watching.
        self.received: list[tuple[str, int | None]] = []
        self._sent_seq: int | None = None  # number of the last frame that reached the link

    def _frame(self, message) -> bytes:
        wire = codec.encode_message(message, self._seq)
        self._seq = (self._seq + 1) % 65536
        return wire

    def hello(self) -> bytes:
        self._seq = 0
        return b"\x00" + self._frame(P.Hello(self.instrument_id, FIRMWARE, self._profile.name, self._scales))

    def answer(self, data: bytes) -> bytes:
        """The instrument's reply to bytes from the host: a HELLO for every HELLO_REQUEST (PROTOCOL.md:
        the instrument introduces itself and carries on, so its frame numbering goes on too)."""
        reply = b""
        for frame in self._host.feed(data):
            name = P.NAMES.get(frame.type, hex(frame.type))
            tag = int.from_bytes(frame.payload[:4], "little") if frame.type in (P.ACK, P.RESEND) else None
            self.received.append((name, tag))
            if frame.type == P.HELLO_REQUEST:
                # A reply takes no number of its own: it carries the number of the frame sent before
                # it, so the frames around it stay consecutive (PROTOCOL.md, HELLO_REQUEST).
                seq = self._sent_seq if self._sent_seq is not None else 65535
                hello = P.Hello(self.instrument_id, FIRMWARE, self._profile.name, self._scales)
                reply += codec.encode_message(hello, seq)
        return reply

    def sent(self) -> None:
        """The chunk last taken from :meth:`chunks` reached the link (chunks are made one at a time)."""
        self._sent_seq = (self._seq - 1) % 65536

    def quantize(self, events: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(events / self._scale), 0, 65535).astype(np.uint16)

    def prepare(self) -> list:
        """Simulate every sample before the first byte: a real instrument measures, it does not
        compute a simulation while the host works, so the host is measured without that load."""
        if getattr(self, "_generated", None) is None:
            sim = SampleSimulator(self.species, self.pathology, InstrumentSettings(instrument_id=self.instrument_id),
                                  self._profile, seed=self.seed)
            self._generated = [sim.generate(self.events) for _ in range(self.samples)]
            self.truths = [s.truth for s in self._generated]
        return self._generated

    def chunks(self) -> Iterator[Chunk]:
        generated = self.prepare()
        yield Chunk(self.hello())
        for k, s in enumerate(generated):
            faults = self.faults.get(k, set())
            tag = k + 1
            started = int(time.time() * 1e6)
            yield Chunk(self._frame(P.SampleBegin(tag, s.truth["sample_id"], self.species, 0,
                                                  float(s.sample.info.dilution or 0.0), started)))
            raw = self.quantize(s.sample.events)
            n = len(raw)
            n_frames = (n + self._per_frame - 1) // self._per_frame
            victim = int(self._rng.integers(n_frames // 4, max(n_frames // 4 + 1, 3 * n_frames // 4)))
            for i, start in enumerate(range(0, n, self._per_frame)):
                block = raw[start : start + self._per_frame]
                wire = self._frame(P.Events(tag, start, block))
                if i == victim:
                    if "drop" in faults:
                        continue
                    if "bitflip" in faults:
                        b = bytearray(wire)
                        pos = int(self._rng.integers(1, len(b) - 1))
                        b[pos] ^= 1 << int(self._rng.integers(0, 8))
                        if b[pos] == 0:  # a flip to 0x00 would split the frame: still a corrupt frame, keep it so
                            b[pos] = 0x01 if wire[pos] != 0x01 else 0x02
                        wire = bytes(b)
                    if "truncate" in faults:
                        wire = wire[: len(wire) // 2] + b"\x00"
                    if "disconnect" in faults:
                        yield Chunk(wire, len(block), disconnect=True)
                        yield Chunk(self.hello())  # the next connection starts with HELLO
                        break
                    if "reboot" in faults:
                        yield Chunk(wire, len(block))
                        yield Chunk(self.hello())
                        break
                yield Chunk(wire, len(block))
            else:
                total = n + (1 if "total" in faults else 0)
                elapsed = int(s.truth["elapsed_s"] * 1e6)
                volume_nl = int(round(s.truth["volume_ul"] * 1000))
                yield Chunk(self._frame(P.SampleEnd(tag, total, elapsed, volume_nl, P.END_COMPLETE)))
            yield Chunk(self._frame(P.Heartbeat(int(time.monotonic() * 1000) & 0xFFFFFFFF, 0)))


def wait_for_host(fd: int, timeout: float) -> bytes | None:
    """Wait for the host's first bytes (its HELLO_REQUEST) before sending, as firmware would; the bytes."""
    import select

    ready, _, _ = select.select([fd], [], [], timeout)
    if ready:
        try:
            return os.read(fd, 4096)
        except OSError:
            return None
    return None


def host_bytes(fd: int) -> bytes:
    """Whatever the host has sent, without waiting."""
    import select

    data = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


class Pacer:
    """Sleeps so that events leave at ``rate`` per second (0: as fast as the link takes them)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.t0 = time.perf_counter()
        self.sent = 0

    def after(self, events: int) -> None:
        if self.rate <= 0 or not events:
            return
        self.sent += events
        ahead = self.sent / self.rate - (time.perf_counter() - self.t0)
        if ahead > 0:
            time.sleep(ahead)


def serve_tcp(emulator: InstrumentEmulator, port: int, rate: float, host: str = "127.0.0.1",
              ready=None, accept_timeout: float = 60.0) -> int:
    """Listen on host:port, stream to each connecting host; a disconnect fault drops the client."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    srv.settimeout(accept_timeout)
    if ready is not None:
        ready(srv.getsockname()[1])
    sent = 0
    conn = None
    pacer = Pacer(rate)
    try:
        for chunk in emulator.chunks():
            if conn is None:
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    break  # no host came back: the instrument gives up on this run
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                first = wait_for_host(conn.fileno(), 2.0) or b""
                # A new host (a restarted stream) asks who we are; the chunk about to go may be a
                # HELLO already (after a disconnect), then the reply is a second, harmless one.
                hello = emulator.answer(first)
                if hello:
                    try:
                        conn.sendall(hello)
                    except OSError:
                        conn.close()
                        conn = None
                        continue
            try:
                reply = emulator.answer(host_bytes(conn.fileno()))
                conn.sendall(reply + chunk.data)
                emulator.sent()
            except OSError:  # the host went away; what it missed is lost, as on a real link
                conn.close()
                conn = None
                continue
            sent += len(chunk.data)
            pacer.after(chunk.events)
            if chunk.disconnect:
                conn.close()
                conn = None
        if conn is not None:
            time.sleep(0.3)  # let the host read the tail (and acknowledge it) before the close
            emulator.answer(host_bytes(conn.fileno()))
    finally:
        if conn is not None:
            conn.close()
        srv.close()
    return sent


def wait_for_hello_request(fd: int, emulator: InstrumentEmulator, timeout: float | None = None) -> bool:
    """Wait until the host has asked who we are (HELLO_REQUEST): it has opened the port, and what
    is written from now on reaches it (opening a serial port flushes what was waiting in it). The
    host's bytes are taken as an instrument takes them. False if ``timeout`` s passed first."""
    import select

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not select.select([fd], [], [], left)[0]:
            return False
        try:
            data = os.read(fd, 4096)
        except OSError:
            return False
        emulator.answer(data)  # the HELLO it asks for is the first chunk the emulator sends anyway
        if any(name == "HELLO_REQUEST" for name, _tag in emulator.received):
            return True


def write_pty(emulator: InstrumentEmulator, rate: float, ready=None, start=None,
              host_timeout: float | None = None) -> int:
    """Stream over a pseudo-terminal pair; ``ready`` receives the slave's path (the host's port).

    Opening a serial port flushes what is waiting in it, so the emulator holds its first byte
    until the host is there: until ``start`` (a threading.Event) is set, or until the host's
    HELLO_REQUEST arrives (however long the person takes to start it; ``host_timeout`` s at most).
    """
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    if ready is not None:
        ready(name)
    if start is not None:
        start.wait(30)
    elif not wait_for_hello_request(master, emulator, host_timeout):
        os.close(master)
        os.close(slave)
        return 0
    pacer = Pacer(rate)
    sent = 0
    try:
        for chunk in emulator.chunks():
            view = memoryview(emulator.answer(host_bytes(master)) + chunk.data)
            while view:
                n = os.write(master, view)
                view = view[n:]
            emulator.sent()
            sent += len(chunk.data)
            pacer.after(chunk.events)
        time.sleep(0.5)
    finally:
        os.close(master)
        os.close(slave)
    return sent


def write_file(emulator: InstrumentEmulator, path: str) -> int:
    with open(path, "wb") as fh:
        return sum(fh.write(chunk.data) for chunk in emulator.chunks())


def _pty_child(emulator: InstrumentEmulator, rate: float, queue, start, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    emulator.prepare()
    queue.put(("truths", emulator.truths))
    write_pty(emulator, rate, ready=lambda name: queue.put(("port", name)), start=start)


def start_pty_instrument(emulator: InstrumentEmulator, rate: float, cpu: int | None = None):
    """The instrument in a process of its own (as a real one is), on a pty: (process, port, truths, start event).

    Set the start event once the host has the port open."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue, start = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_pty_child, args=(emulator, rate, queue, start, cpu), daemon=True)
    proc.start()
    got = {}
    while len(got) < 2:
        kind, value = queue.get(timeout=120)
        got[kind] = value
    return proc, got["port"], got["truths"], start
