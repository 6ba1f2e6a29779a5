"""``edgehema stream``: sit on the instrument's port, classify as events arrive, report each sample.

Order of work for every sample, so that nothing is lost:

1. every frame is appended to the sample's archive file as it arrives (flushed per read);
2. events are run through the graph in fixed blocks of ``BLOCK`` events, by event index, so the
   latents, and so the result, do not depend on how the bytes were chunked in time (a replay of the
   archive gives the same result to the last digit);
3. at SAMPLE_END the last partial block, adaptation, assignment and counting run (tens of ms);
4. the result is committed to the SQLite journal; only then is it written to the sinks and
   acknowledged to the instrument.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from firmware_bridge import codec
from firmware_bridge import protocol as P

from ..classifier import Classifier, EventInference
from ..exceptions import EdgehemaError
from ..profiles import get_profile
from ..result import result_from_inference
from ..sample import Sample, SampleInfo
from .journal import Journal
from .session import EventBatch, Notice, OpenSample, SampleClosed, SampleOpened, WireSession

BLOCK = 4096


class SampleAssembler:
    """Events and latents of the open sample, computed block by block."""

    def __init__(self, sample: OpenSample, classifier: Classifier):
        self.sample = sample
        self.classifier = classifier
        self.events: list[np.ndarray] = []
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.outputs: dict[str, list[np.ndarray]] = {}
        self.t_first = None
        #: arrival times of batches not yet classified, and the measured arrival-to-classification
        #: latency of every batch (seconds), for the benchmark and the live display.
        self._arrivals: list[float] = []
        self.latencies: list[float] = []

    def add(self, events: np.ndarray) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        self._arrivals.append(now)
        self.events.append(events)
        self.pending.append(events)
        self.n_pending += len(events)
        if self.n_pending >= BLOCK:
            block = np.concatenate(self.pending)
            full = (len(block) // BLOCK) * BLOCK
            self._run(block[:full])
            rest = block[full:]
            self.pending, self.n_pending = ([rest] if len(rest) else []), len(rest)
            done = time.perf_counter()
            # Batches whose events are all classified now (the last may straddle into the remainder).
            keep = 1 if len(rest) else 0
            finished = self._arrivals[: len(self._arrivals) - keep]
            self.latencies += [done - t for t in finished]
            self._arrivals = self._arrivals[len(finished):]

    def _run(self, block: np.ndarray) -> None:
        for start in range(0, len(block), BLOCK):
            for k, v in self.classifier.run_graph(block[start : start + BLOCK]).items():
                self.outputs.setdefault(k, []).append(v)

    def finish(self, closed: SampleClosed, t0: float) -> dict:
        if self.n_pending:
            self._run(np.concatenate(self.pending))
            self.pending, self.n_pending = [], 0
        done = time.perf_counter()
        self.latencies += [done - t for t in self._arrivals]
        self._arrivals = []
        s = self.sample
        n_features = len(s.features)
        events = np.concatenate(self.events) if self.events else np.zeros((0, n_features), np.float32)
        profile = get_profile(s.profile)
        self.classifier.check(profile, f"instrument {s.instrument_id}")
        volume_ul = closed.volume_nl / 1000.0 if closed.volume_nl else None
        info = SampleInfo(
            sample_id=s.sample_id, species=s.species or None, dilution=s.dilution or None, volume_ul=volume_ul,
            instrument_id=s.instrument_id, started_at=closed.started_at() if s.started_unix_us else None,
            ended_at=closed.ended_at() if s.started_unix_us else None, source=f"stream tag {s.tag}",
        )
        sample = Sample(events=events, profile=profile, info=info)
        if len(events):
            out = {k: np.concatenate(v) for k, v in self.outputs.items()}
            inf = self.classifier.combine(out["z1"], out["z2"],
                                          out.get("recon_err"), self.classifier.adapt)
        else:
            inf = EventInference(np.zeros((0, 5)), np.zeros(0, np.uint8))
        flags = dict(s.flags)
        result = result_from_inference(sample, inf, self.classifier, t0, complete=closed.complete, extra_flags=flags)
        out_dict = result.to_dict()
        out_dict["tag"] = s.tag
        out_dict["complete"] = closed.complete and not flags
        return out_dict


def replay_bytes(data: bytes, classifier: Classifier) -> list[dict]:
    """Results of every sample in an archive (or any captured byte stream), as the stream made them."""
    session = WireSession()
    results: list[dict] = []
    assemblers: dict[int, SampleAssembler] = {}

    def handle(item) -> None:
        if isinstance(item, SampleOpened):
            assemblers[id(item.sample)] = SampleAssembler(item.sample, classifier)
        elif isinstance(item, EventBatch):
            assemblers[id(item.sample)].add(item.events)
        elif isinstance(item, SampleClosed):
            a = assemblers.pop(id(item.sample))
            results.append(a.finish(item, time.perf_counter()))

    for item in session.feed(data):
        handle(item)
    for item in session.disconnect():
        handle(item)
    return results


@dataclass
class StreamConfig:
    port: str
    baud: int = 3_000_000
    journal: Path = Path("edgehema-journal.sqlite")
    archive_dir: Path = Path("edgehema-archive")
    model: str | None = None
    backend: str = "auto"
    adapt: bool = True
    reconnect: bool = True
    reconnect_delay: float = 0.5
    max_samples: int | None = None
    idle_exit: float | None = None
    ack: bool = True
    read_size: int = 65536


@dataclass
class StreamStats:
    samples: int = 0
    events: int = 0
    started: float = field(default_factory=time.perf_counter)
    current: str = ""
    result_latency_ms: list[float] = field(default_factory=list)
    batch_latency_s: list[float] = field(default_factory=list)
    result_breakdown_ms: list[tuple[float, float]] = field(default_factory=list)  # (classify+count, journal)


class StreamRunner:
    def __init__(self, cfg: StreamConfig, emit: Callable[[dict], None], log: Callable[[str], None] = lambda s: None,
                 classifier: Classifier | None = None):
        self.cfg = cfg
        self.emit = emit
        self.log = log
        self.classifier = classifier or Classifier(cfg.model, backend=cfg.backend, adapt=cfg.adapt)
        self.journal = Journal(cfg.journal)
        cfg.archive_dir.mkdir(parents=True, exist_ok=True)
        self.stats = StreamStats()
        self._stop = False
        self._last_sync = time.monotonic()
        self._open: dict[int, tuple[SampleAssembler, int, Path, object, int]] = {}

    # ------------------------------------------------------------ recovery
    def warm_up(self, events: int = 150_000) -> None:
        """Run the end-of-sample path once on dummy data: the first real sample then does not pay for
        first-touch memory and first calls (measured: 114 ms instead of about 30 ms)."""
        if self.classifier.bundle.kind != "two-stage-idec-vade":
            return
        rng = np.random.default_rng(0)
        d1 = self.classifier.centroids.shape[1]
        d2 = self.classifier.gmm.means.shape[1]
        inf = self.classifier.combine(rng.standard_normal((events, d1), dtype=np.float32),
                                      rng.standard_normal((events, d2), dtype=np.float32), None, self.classifier.adapt)
        profile = self.classifier.bundle.profile()
        from ..counting import count_sample
        from ..result import DEFAULT_AREA_FEATURES

        fake = np.abs(rng.standard_normal((events, profile.n_features), dtype=np.float32)) * 1000
        count_sample(fake, inf.probabilities, inf.labels, profile, SampleInfo(), DEFAULT_AREA_FEATURES)

    def recover(self) -> int:
        """Report samples a crash left open, recomputed from their archives, as incomplete."""
        n = 0
        for row, tag, sample_id, archive in self.journal.interrupted():
            path = Path(archive)
            data = path.read_bytes() if path.exists() else b""
            results = replay_bytes(data, self.classifier) if data else []
            result = results[-1] if results else {"sample_id": sample_id, "tag": tag, "events": {"total": 0},
                                                  "flags": ["incomplete"], "complete": False}
            result.setdefault("flags", [])
            if "interrupted" not in result["flags"]:
                result["flags"].append("interrupted")
                result.setdefault("flag_details", {})["interrupted"] = "the host stopped (crash or kill) during this sample"
            result["complete"] = False
            self.journal.commit_result(row, result, complete=False)
            self.emit(result)
            n += 1
            self.log(f"recovered interrupted sample {sample_id} (tag {tag}) from {path}")
        return n

    # ----------------------------------------------------------------- run
    def stop(self) -> None:
        self._stop = True

    def run(self) -> int:
        import serial

        self.recover()
        self.warm_up()
        last_data = time.monotonic()
        while not self._stop:
            try:
                port = serial.serial_for_url(self.cfg.port, baudrate=self.cfg.baud, timeout=0.02)
            except (serial.SerialException, OSError, ValueError) as exc:
                if not self.cfg.reconnect:
                    raise EdgehemaError(f"{self.cfg.port}: cannot open the port: {exc}") from None
                self.log(f"{self.cfg.port}: not available ({exc}); retrying")
                if self.cfg.idle_exit and time.monotonic() - last_data > self.cfg.idle_exit:
                    break
                time.sleep(self.cfg.reconnect_delay)
                continue
            session = WireSession()
            try:  # opening the port flushed anything waiting: ask the instrument to introduce itself
                port.write(codec.encode_frame(P.HELLO_REQUEST, 0, b""))
            except Exception as exc:  # noqa: BLE001 - an instrument that cannot hear us still talks
                self.log(f"could not send HELLO_REQUEST: {exc}")
            clf = self.classifier
            self.log(f"connected to {self.cfg.port}; model {clf.bundle.name} {clf.bundle.version} on {clf.backend_name}")
            self._session = session
            try:
                while not self._stop:
                    data = port.read(self.cfg.read_size)
                    if data:
                        last_data = time.monotonic()
                        self._handle_all(session.feed(data), port)
                        self._flush_archives()
                    elif self.cfg.idle_exit and time.monotonic() - last_data > self.cfg.idle_exit:
                        self._stop = True
                    if self.cfg.max_samples and self.stats.samples >= self.cfg.max_samples:
                        self._stop = True
            except (serial.SerialException, OSError) as exc:
                self.log(f"{self.cfg.port}: link lost ({exc})")
            finally:
                # The link is gone (or we stop): an open sample is incomplete.
                self._handle_all(session.disconnect(), None)
                try:
                    port.close()
                except Exception:  # noqa: BLE001 - closing a dead port may fail any way
                    pass
            if not self.cfg.reconnect:
                break
            if not self._stop:
                time.sleep(self.cfg.reconnect_delay)
        self.journal.close()
        return self.stats.samples

    # ------------------------------------------------------------- helpers
    def _handle_all(self, items, port) -> None:
        for item in items:
            if isinstance(item, SampleOpened):
                s = item.sample
                path = self.cfg.archive_dir / f"{_safe(s.sample_id)}-{s.tag}-{int(time.time() * 1000)}.ehw"
                fh = open(path, "ab")
                row = self.journal.open_sample(s.tag, s.sample_id, s.instrument_id, str(path))
                self._open[id(s)] = (SampleAssembler(s, self.classifier), row, path, fh, 0)
                self.stats.current = s.sample_id
            elif isinstance(item, EventBatch):
                self._open[id(item.sample)][0].add(item.events)
                self.stats.events += len(item.events)
            elif isinstance(item, SampleClosed):
                self._close(item, port)
            elif isinstance(item, Notice):
                self.log(item.text)

    def _close(self, item: SampleClosed, port) -> None:
        # No garbage-collector pause inside the result's critical path (it creates no cycles).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            t0 = time.perf_counter()
            self._flush_archives()
            assembler, row, path, fh, _ = self._open.pop(id(item.sample))
            result = assembler.finish(item, t0)
            t1 = time.perf_counter()
            self.stats.batch_latency_s += assembler.latencies
            # The journal commit is the durable point (fsync); the result goes out only after it.
            self.journal.commit_result(row, result, complete=item.complete)
            t2 = time.perf_counter()
            self.emit(result)
            self.stats.result_breakdown_ms.append((1000 * (t1 - t0), 1000 * (t2 - t1)))
            self.stats.result_latency_ms.append(1000 * (time.perf_counter() - t0))
        finally:
            if gc_was_enabled:
                gc.enable()
        self.stats.samples += 1
        # The archive is already in the OS (safe from a crash of this process); make it safe from
        # power loss too, off the result's critical path.
        os.fsync(fh.fileno())
        fh.close()
        if port is not None and self.cfg.ack and item.complete:
            ack = P.Ack(item.sample.tag, P.ACK_CLEAN if result["complete"] else P.ACK_FLAGGED)
            try:
                port.write(codec.encode_message(ack, self.stats.samples))
            except Exception as exc:  # noqa: BLE001 - the result is safe; the ACK is a courtesy
                self.log(f"could not send ACK: {exc}")

    def _flush_archives(self) -> None:
        now = time.monotonic()
        sync = now - self._last_sync > 1.0  # fsync about once a second, not on every read
        if sync:
            self._last_sync = now
        for key, (assembler, row, path, fh, written) in list(self._open.items()):
            frames = assembler.sample.frames
            if len(frames) > written:
                fh.write(b"".join(frames[written:]))
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
                # Frames already on disk need not stay in memory.
                assembler.sample.frames = []
                self._open[key] = (assembler, row, path, fh, 0)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "sample"
