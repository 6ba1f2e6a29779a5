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

from edgehema.model.bundle import Bundle
from edgehema.model.signing import TrustPolicy
from edgehema.model.classifier import Classifier, EventInference
from edgehema.exceptions import EdgehemaError, StorageFullError
from edgehema.profiles import get_profile
from edgehema.counts.result import result_from_inference
from edgehema.sample import Sample, SampleInfo
from edgehema.stream.journal import Journal
from edgehema.stream.storage import NOT_STORED_NOTE, Held, ResultStore
from edgehema._utils.log_limit import RateLimitedLog
from edgehema.stream.session import Notice, OpenSample, SampleClosed, SessionHandler, WireSession, dispatch
from edgehema.counts import scattergram
from edgehema.counts.counting import count_sample
from edgehema.counts.result import DEFAULT_AREA_FEATURES

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

    def finish(self, closed: SampleClosed, t0: float, plots: Path | None = None) -> dict:
        if self.n_pending:
            self._run(np.concatenate(self.pending))
            self.pending, self.n_pending = [], 0
        done = time.perf_counter()
        self.latencies += [done - t for t in self._arrivals]
        self._arrivals = []
        s = self.sample
        if s.features:
            profile = get_profile(s.profile)
            self.classifier.check(profile, f"instrument {s.instrument_id}")
        else:  # nothing could be decoded (no HELLO): an empty result that carries the sample's flags
            profile = self.classifier.bundle.profile()
        events = np.concatenate(self.events) if self.events else np.zeros((0, profile.n_features), np.float32)
        volume_ul = closed.volume_nl / 1000.0 if closed.volume_nl else None
        info = SampleInfo(
            sample_id=s.sample_id, species=s.species or None, dilution=s.dilution or None, volume_ul=volume_ul,
            instrument_id=s.instrument_id, started_at=closed.started_at() if s.started_unix_us else None,
            ended_at=closed.ended_at() if s.started_unix_us else None, source=f"stream tag {s.tag}",
        )
        self.info = info
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
        out_dict["sample_id_source"] = s.id_source
        out_dict["complete"] = closed.complete and not flags
        if plots is not None and len(events):

            try:
                out_dict["scattergram"] = str(scattergram.write(plots, out_dict, events, inf.labels, profile))
            except OSError as exc:  # a picture is a courtesy: the result goes on without it
                out_dict["scattergram_error"] = f"{plots}: {exc.strerror or exc}"
        return out_dict


class _Assembly(SessionHandler):
    """Samples assembled from a byte stream alone (an archive, a capture): replay and restore."""

    def __init__(self, classifier: Classifier, plots: Path | None = None, origins: list[SampleInfo] | None = None):
        self.classifier, self.plots, self.origins = classifier, plots, origins
        self.assemblers: dict[int, SampleAssembler] = {}
        self.results: list[dict] = []

    def opened(self, sample: OpenSample) -> None:
        self.assemblers[id(sample)] = SampleAssembler(sample, self.classifier)

    def events(self, sample: OpenSample, events: np.ndarray) -> None:
        self.assemblers[id(sample)].add(events)

    def closed(self, item: SampleClosed) -> None:
        a = self.assemblers.pop(id(item.sample))
        self.results.append(a.finish(item, time.perf_counter(), self.plots))
        if self.origins is not None:
            self.origins.append(a.info)


def replay_bytes(data: bytes, classifier: Classifier, plots: Path | None = None,
                 origins: list[SampleInfo] | None = None) -> list[dict]:
    """Results of every sample in an archive (or any captured byte stream), as the stream made them.
    ``origins``, if given, receives each result's SampleInfo (instrument, start time) in order."""
    session = WireSession()
    assembly = _Assembly(classifier, plots, origins)
    dispatch(session.feed(data), assembly)
    dispatch(session.disconnect(), assembly)
    return assembly.results


def restore_open(data: bytes, classifier: Classifier) -> SampleAssembler | None:
    """The sample an archive holds, as the host had it when it stopped: open (no SAMPLE_END), its
    metadata and every archived event. None if the archive holds no open sample."""
    session = WireSession()
    assembly = _Assembly(classifier)
    dispatch(session.feed(data), assembly)
    s = session.open
    if s is None or id(s) not in assembly.assemblers:
        return None
    s.frames = []  # on disk already
    return assembly.assemblers[id(s)]


@dataclass
class _Suspended:
    """A sample the host had open when it stopped or lost the link, waiting for the instrument's
    continuation (joined to it) or for the wait to end (reported incomplete)."""

    assembler: SampleAssembler
    row: int | None
    path: Path
    why: str
    since: float
    recovered: bool = False  # taken back from the journal at start (not counted in this run's samples)


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
    #: Results held in memory while the storage is full, at most; past that the stream stops (their
    #: results are then written to the sinks flagged ``not_stored``, never dropped).
    max_held: int = 500
    #: Bytes kept free beside the journal for the results held when the stream must stop on a full
    #: disk (a result is a few kB; 1 MiB holds a hundred and more).
    journal_reserve: int = 1 << 20
    #: Folder for each sample's scattergram PNG (None: no pictures).
    plots: Path | None = None
    #: Seconds a sample the host had open when it stopped (or lost the link) waits, once the link is
    #: up, for the instrument to carry on with it; then it is reported incomplete.
    resume_wait_s: float = 10.0
    #: Public keys the model must be signed by (files or folders; empty: $EDGEHEMA_TRUSTED_KEYS, and
    #: without it hash checks only). ``trusted_keys_origin`` names where the list was set.
    trusted_keys: tuple[str, ...] = ()
    trusted_keys_origin: str = "trusted_keys"


@dataclass
class StreamStats:
    samples: int = 0
    events: int = 0
    started: float = field(default_factory=time.perf_counter)
    current: str = ""
    result_latency_ms: list[float] = field(default_factory=list)
    batch_latency_s: list[float] = field(default_factory=list)
    result_breakdown_ms: list[tuple[float, float]] = field(default_factory=list)  # (classify+count, journal)


@dataclass
class _OpenArchive:
    assembler: SampleAssembler
    row: int | None
    path: Path
    fh: object | None  # None once the archive could not be written (storage full)


class StreamRunner(SessionHandler):
    def __init__(self, cfg: StreamConfig, emit: Callable[[dict], None], log: Callable[[str], None] = lambda s: None,
                 classifier: Classifier | None = None):
        check_port_url(cfg.port)
        self.cfg = cfg
        self.emit = emit
        self.log = RateLimitedLog(log)
        # Settings that cannot work are refused before anything is loaded or logged.
        if cfg.archive_dir.exists() and not cfg.archive_dir.is_dir():
            raise EdgehemaError(f"{cfg.archive_dir}: the archive folder is a file, not a folder")
        if not Path(cfg.journal).parent.is_dir():
            raise EdgehemaError(f"{cfg.journal}: the journal's folder {Path(cfg.journal).parent} does not exist")
        if classifier is None:
            trust = (TrustPolicy.from_paths(cfg.trusted_keys, cfg.trusted_keys_origin) if cfg.trusted_keys
                     else TrustPolicy.from_environment())
            classifier = Classifier(Bundle.load(cfg.model, trust=trust), backend=cfg.backend, adapt=cfg.adapt)
        self.classifier = classifier
        b = classifier.bundle
        signed = (f"signed by trusted key {b.signed_by.key_id} ({b.signed_by.source})" if b.signed_by
                  else "signature not checked: no trusted keys configured, hash check only")
        self.log(f"model {b.name} {b.version} at {b.path}, manifest sha256 {b.sha256[:16]}..., {signed}")
        for line in self.classifier.refused:  # engines passed over: not installed, or failed the self-test
            self.log(f"{self.classifier.bundle.name}: {line}; counting on {self.classifier.backend_name}")
        if self.classifier.selftest is not None:
            self.log(self.classifier.selftest.line())
        self.journal = Journal(cfg.journal)
        problem = self.journal.keep_reserve(cfg.journal_reserve)
        if problem:
            self.log(f"storage full: cannot keep the journal's {cfg.journal_reserve >> 10} kB reserve ({problem}); "
                     f"results held at a stop may have to be written out unstored")
        try:
            cfg.archive_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgehemaError(f"{cfg.archive_dir}: cannot create the archive folder: {exc.strerror}") from None
        self.stats = StreamStats()
        self._stop = False
        self._stop_requested = False  # stop() (a signal): open samples stay open for the next start
        self._stop_reason: str | None = None  # why the stream stopped itself, for the open sample
        self._connected_at: float | None = None
        self._last_sync = time.monotonic()
        self._open: dict[int, _OpenArchive] = {}
        self._suspended: dict[tuple[str, int], _Suspended] = {}
        self.store = ResultStore(self.journal, self.emit, self._acknowledge, self.log, cfg.max_held, self._overflow)
        self._port = None

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

        fake = np.abs(rng.standard_normal((events, profile.n_features), dtype=np.float32)) * 1000
        count_sample(fake, inf.probabilities, inf.labels, profile, SampleInfo(), DEFAULT_AREA_FEATURES)

    def recover(self) -> int:
        """At start: emit results that were stored but never delivered; then take back the samples
        left open by a crash or a stop, from their archives: each waits for the instrument to carry
        on with it (joined, reported once) or is reported incomplete. Works on a full disk: what
        cannot be stored is held in memory and stored later."""
        for row, result in self.journal.unemitted():
            self.store.deliver(row, result)
            self.log(f"emitted stored result of sample {result.get('sample_id')} that was not delivered before")
        n = 0
        for row, tag, sample_id, archive, note in self.journal.interrupted():
            path = Path(archive)
            if note == NOT_STORED_NOTE:
                self._keep_emitted(row, tag, sample_id, path)
                continue
            why = note or "the host stopped (crash, kill or power loss) during this sample"
            try:
                data = path.read_bytes() if path.exists() else b""
            except OSError:
                data = b""
            assembler = restore_open(data, self.classifier) if data else None
            if assembler is not None:
                s = assembler.sample
                self._suspended[(s.instrument_id, s.tag)] = _Suspended(assembler, row, path, why, time.monotonic(),
                                                                       recovered=True)
                self.log(f"sample {s.sample_id} (tag {tag}) was open when the host stopped: {s.received:,} events "
                         f"taken back from {path}; waiting for the instrument to carry on with it")
                n += 1
                continue
            results = replay_bytes(data, self.classifier) if data else []
            if results:  # the archive holds a sample that ended (its SAMPLE_END archived): as it is
                result = results[-1]
            else:
                empty = OpenSample(tag, sample_id, "", 0.0, 0, (), "", "")
                empty.flag("incomplete", "the host stopped before any event of this sample was archived")
                result = SampleAssembler(empty, self.classifier).finish(SampleClosed(empty, complete=False), time.perf_counter())
            _flag_interrupted(result, why)
            self.store.store(Held(row, result, False, tag, sample_id, None, archive, ack=False, recovered=True))
            n += 1
            self.log(f"recovered interrupted sample {sample_id} (tag {tag}) from {path}")
        return n

    def _keep_emitted(self, row: int, tag: int, sample_id: str, path: Path) -> None:
        """A result written out unstored at the last stop (the disk full even for the reserve): its
        archive's result is stored for the record, marked emitted, and not emitted again."""
        try:
            data = path.read_bytes() if path.exists() else b""
        except OSError:
            data = b""
        results = replay_bytes(data, self.classifier) if data else []
        result = results[-1] if results else {"sample_id": sample_id, "tag": tag, "flags": [], "flag_details": {}}
        _flag_interrupted(result, "the stream stopped on a full disk; the whole result was written to the output "
                                  "flagged not_stored then; this is what the archive holds")
        try:
            self.journal.commit_result(row, result, False)
            self.journal.mark_emitted(row)
        except StorageFullError as exc:
            self.store.problem(str(exc))
            return
        self.log(f"sample {sample_id} (tag {tag}) was written out unstored when the stream last stopped: "
                 f"not emitted again; its archive's result is kept in the journal")

    def _resume(self, instrument_id: str, tag: int, features: tuple) -> OpenSample | None:
        """The session's ``resume``: a suspended sample of this instrument and tag goes on."""
        waiting = self._suspended.get((instrument_id, tag))
        if waiting is None or waiting.assembler.sample.features != features:
            return None
        del self._suspended[(instrument_id, tag)]
        s = waiting.assembler.sample
        s.flag("resumed", f"{waiting.why}; the instrument carried on with the sample and the rest was joined to "
                          f"the {s.received:,} events received before")
        fh = None
        try:
            fh = open(waiting.path, "ab")
        except OSError as exc:
            self.store.problem(f"{waiting.path}: cannot append to the archive: {exc.strerror}")
            s.flag("archive_incomplete", f"the raw frames of this sample could not all be archived ({exc.strerror})")
        self._open[id(s)] = _OpenArchive(waiting.assembler, waiting.row, waiting.path, fh)
        self.log(f"sample {s.sample_id} (tag {tag}) goes on after the host's restart: joined")
        return s

    def _suspend(self, s: OpenSample, why: str) -> None:
        """The host stops or loses the link with ``s`` open: keep it for its continuation."""
        entry = self._open.pop(id(s))
        self._flush_one(entry, sync=True)
        if entry.fh is not None:
            try:
                entry.fh.close()
            except OSError:
                pass
        if self._stop_requested and entry.row is not None:
            try:
                self.journal.leave_open(entry.row, why)
            except StorageFullError as exc:
                self.store.problem(str(exc))
        self._suspended[(s.instrument_id, s.tag)] = _Suspended(entry.assembler, entry.row, entry.path, why,
                                                               time.monotonic())

    def _end_suspended(self, why: str | None = None, due_only: bool = False) -> None:
        """Report suspended samples incomplete: the instrument began another sample, or the wait ended."""
        now = time.monotonic()
        for key, waiting in list(self._suspended.items()):
            start = max(waiting.since, self._connected_at or waiting.since)
            if due_only and now - start < self.cfg.resume_wait_s:
                continue
            del self._suspended[key]
            s = waiting.assembler.sample
            s.flag("incomplete", f"SAMPLE_END never arrived ({why or 'the instrument did not carry on with it'})")
            result = waiting.assembler.finish(SampleClosed(s, complete=False), time.perf_counter(), self.cfg.plots)
            _flag_interrupted(result, waiting.why)
            self.store.store(Held(waiting.row, result, False, s.tag, s.sample_id, s.instrument_id, str(waiting.path),
                              ack=False, recovered=waiting.recovered and waiting.row is not None))
            self.stats.samples += not waiting.recovered

    # ----------------------------------------------------------------- run
    def stop(self) -> None:
        """Stop on request (SIGTERM, Ctrl-C): a sample still open stays open in the journal and its
        archive, for the next start to join the instrument's continuation to."""
        self._stop_requested = True
        self._stop = True

    def run(self) -> int:
        import serial

        try:
            self.recover()
            self.warm_up()
            self._run(serial)
        finally:
            self._finish()
        return self.stats.samples

    def _run(self, serial) -> None:
        last_data = time.monotonic()
        while not self._stop:
            try:
                port = serial.serial_for_url(self.cfg.port, baudrate=self.cfg.baud, timeout=0.02)
            except (serial.SerialException, OSError, ValueError, OverflowError) as exc:
                if not self.cfg.reconnect:
                    raise EdgehemaError(f"{self.cfg.port}: cannot open the port: {_port_problem(exc)}") from None
                self.log(f"{self.cfg.port}: not available ({_port_problem(exc)}); retrying every "
                         f"{self.cfg.reconnect_delay:g} s", kind="port_retry")
                if self.cfg.idle_exit and time.monotonic() - last_data > self.cfg.idle_exit:
                    break
                if self._suspended:
                    self._end_suspended(due_only=True)
                time.sleep(self.cfg.reconnect_delay)
                self.store.retry()
                continue
            session = WireSession(self.journal.last_hello(), resume=self._resume)
            self._port = port
            self._connected_at = time.monotonic()
            self._request_hello(session)
            clf = self.classifier
            self.log(f"connected to {self.cfg.port}; model {clf.bundle.name} {clf.bundle.version} on {clf.backend_name}")
            self._session = session
            last_request = time.monotonic()
            try:
                while not self._stop:
                    data = port.read(self.cfg.read_size)
                    now = time.monotonic()
                    if data:
                        last_data = now
                        self._handle_all(session.feed(data))
                        self._flush_archives()
                        if session.waiting_for_hello and now - last_request > 1.0:
                            self._request_hello(session)  # the instrument may not have heard the first
                            last_request = now
                    elif self.cfg.idle_exit and now - last_data > self.cfg.idle_exit:
                        self._stop = True
                    if self._suspended:
                        self._end_suspended(due_only=True)
                    if self.store.waiting and now - self.store.last_try > 1.0:
                        self.store.retry()
                    if self.cfg.max_samples and self.stats.samples >= self.cfg.max_samples:
                        self._stop = True
            except (serial.SerialException, OSError) as exc:
                self.log(f"{self.cfg.port}: link lost ({exc})")
            except KeyboardInterrupt:  # Ctrl-C is a stop like SIGTERM: the open sample stays open
                self._stop_requested = self._stop = True
            finally:
                # The link is gone (or we stop): an open sample waits for its continuation (after a
                # reconnect, or the next start) rather than being cut here.
                if session.open is not None and id(session.open) in self._open:
                    why = ("the host was stopped (signal) during this sample" if self._stop_requested
                           else self._stop_reason or "the link was lost during this sample")
                    self._suspend(session.open, why)
                    session.open = None
                self._handle_all(session.disconnect())
                self._port = None
                self._connected_at = None
                try:
                    port.close()
                except Exception:  # noqa: BLE001 - closing a dead port may fail any way
                    pass
            if not self.cfg.reconnect:
                break
            if not self._stop:
                time.sleep(self.cfg.reconnect_delay)

    def _finish(self) -> None:
        """Last try to store what is held; what still cannot be stored goes to the sinks flagged
        ``not_stored`` (never dropped), and the run ends with an error."""
        if self._stop_requested:
            for waiting in self._suspended.values():
                self.log(f"sample {waiting.assembler.sample.sample_id} left open: it is joined to the instrument's "
                         f"continuation, or reported incomplete, at the next start")
        else:
            self._end_suspended("the stream ended")
        unstored = self.store.finish()
        self.log.flush()
        self.journal.close()
        if unstored:
            raise StorageFullError(f"{self.cfg.journal}: storage full: {unstored} result(s) could not be stored; "
                                   f"they were written to the output flagged not_stored ({self.store.full})")

    def _request_hello(self, session: WireSession) -> None:
        try:  # opening the port flushed anything waiting: ask the instrument to introduce itself
            self._port.write(codec.encode_frame(P.HELLO_REQUEST, 0, b""))
            session.request_hello()
        except Exception as exc:  # noqa: BLE001 - an instrument that cannot hear us still talks
            self.log(f"could not send HELLO_REQUEST: {exc}", kind="hello_request")

    # ------------------------------------------------------------- helpers
    def _handle_all(self, items) -> None:
        dispatch(items, self)

    # SessionHandler: what the stream does with each item of the session.
    def events(self, sample: OpenSample, events: np.ndarray) -> None:
        self._open[id(sample)].assembler.add(events)
        self.stats.events += len(events)

    def opened(self, sample: OpenSample) -> None:
        if self._suspended:
            self._end_suspended(f"the instrument began sample {sample.sample_id}")
        self._opened(sample)

    def resumed(self, sample: OpenSample) -> None:
        self.stats.current = sample.sample_id

    def closed(self, item: SampleClosed) -> None:
        self._close(item)

    def notice(self, item: Notice) -> None:
        self.log(item.text, kind=item.kind if item.kind != "hello" else "")
        if item.kind == "hello" and self._session.hello is not None:
            self._remember_hello(self._session)

    def _remember_hello(self, session: WireSession) -> None:
        try:
            self.journal.remember_hello(session.hello.instrument_id, session.hello_frame)
        except StorageFullError as exc:
            self.store.problem(str(exc))

    def _opened(self, s: OpenSample) -> None:
        path = self.cfg.archive_dir / f"{_safe(s.sample_id)}-{s.tag}-{int(time.time() * 1000)}.ehw"
        fh = None
        try:
            fh = open(path, "ab")
        except OSError as exc:
            self.store.problem(f"{path}: cannot create the archive: {exc.strerror}")
            s.flag("archive_incomplete", f"the raw frames of this sample could not be archived ({exc.strerror})")
        row = None
        try:
            row = self.journal.open_sample(s.tag, s.sample_id, s.instrument_id, str(path))
        except StorageFullError as exc:
            self.store.problem(str(exc))
        self._open[id(s)] = _OpenArchive(SampleAssembler(s, self.classifier), row, path, fh)
        self.stats.current = s.sample_id

    def _close(self, item: SampleClosed) -> None:
        # No garbage-collector pause inside the result's critical path (it creates no cycles).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            t0 = time.perf_counter()
            self._flush_archives()
            entry = self._open.pop(id(item.sample))
            result = entry.assembler.finish(item, t0, self.cfg.plots)
            t1 = time.perf_counter()
            self.stats.batch_latency_s += entry.assembler.latencies
            s = item.sample
            held = Held(entry.row, result, item.complete, s.tag, s.sample_id, s.instrument_id, str(entry.path),
                         ack=item.complete)
            # The journal commit is the durable point (fsync); the result goes out only after it.
            stored = self.store.store(held)
            t2 = time.perf_counter()
            if stored:
                self.stats.result_breakdown_ms.append((1000 * (t1 - t0), 1000 * (t2 - t1)))
                self.stats.result_latency_ms.append(1000 * (time.perf_counter() - t0))
        finally:
            if gc_was_enabled:
                gc.enable()
        self.stats.samples += 1
        # The archive is already in the OS (safe from a crash of this process); make it safe from
        # power loss too, off the result's critical path.
        if entry.fh is not None:
            try:
                os.fsync(entry.fh.fileno())
            except OSError as exc:
                self.store.problem(f"{entry.path}: {exc.strerror}")
            finally:
                try:
                    entry.fh.close()
                except OSError:
                    pass

    def _acknowledge(self, h: Held) -> None:
        """ACK a stored result to the instrument (late, for one that was held)."""
        if h.ack and self.cfg.ack and self._port is not None:
            ack = P.Ack(h.tag, P.ACK_CLEAN if h.result.get("complete") else P.ACK_FLAGGED)
            try:
                self._port.write(codec.encode_message(ack, self.stats.samples))
            except Exception as exc:  # noqa: BLE001 - the result is safe; the ACK is a courtesy
                self.log(f"could not send ACK: {exc}", kind="ack")

    def _overflow(self) -> None:
        self._stop = True
        self._stop_reason = (f"the stream stopped during this sample: more than {self.cfg.max_held} results "
                             f"held on a full disk")

    def _flush_archives(self) -> None:
        now = time.monotonic()
        sync = now - self._last_sync > 1.0  # fsync about once a second, not on every read
        if sync:
            self._last_sync = now
        for entry in self._open.values():
            self._flush_one(entry, sync)

    def _flush_one(self, entry: _OpenArchive, sync: bool) -> None:
        frames = entry.assembler.sample.frames
        if not frames:
            return
        # Frames already on disk (or that cannot be written) need not stay in memory.
        entry.assembler.sample.frames = []
        if entry.fh is None:
            return
        try:
            entry.fh.write(b"".join(frames))
            entry.fh.flush()
            if sync:
                os.fsync(entry.fh.fileno())
        except OSError as exc:
            self.store.problem(f"{entry.path}: {exc.strerror}")
            entry.assembler.sample.flag("archive_incomplete",
                                        f"the raw frames of this sample could not all be archived ({exc.strerror})")
            try:
                entry.fh.close()
            except OSError:
                pass
            entry.fh = None


def _flag_interrupted(result: dict, why: str) -> None:
    result.setdefault("flags", [])
    if "interrupted" not in result["flags"]:
        result["flags"].append("interrupted")
        result.setdefault("flag_details", {})["interrupted"] = why
    result["complete"] = False


def _port_problem(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, OverflowError) or "port must be 0-65535" in text:
        return "the TCP port must be a number from 1 to 65535"
    return text


def check_port_url(url: str) -> None:
    """Refuse a network port URL whose host or port cannot be right, before pyserial gives an
    unrelated message for it (it reports a bad port number as a bad logging option)."""
    from urllib.parse import urlsplit

    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("socket", "rfc2217"):
        return
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 1 <= port <= 65535:
        raise EdgehemaError(f"{url}: a {scheme}:// port needs HOST:PORT with PORT a number from 1 to 65535")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "sample"
