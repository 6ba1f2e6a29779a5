"""The stream's results on their way out: journaled, then emitted, then acknowledged, in order,
whatever the storage does.

``ResultStore.store`` commits a result to the journal and only then writes it to the sinks and
acknowledges it to the instrument. With the storage full (or failing) a result is *held* in memory,
in order, neither emitted nor acknowledged; ``retry`` stores what is held once the storage takes
writes again. A result the sinks cannot write (an output file on a full disk) stays stored and
undelivered and is retried; one whose "emitted" mark cannot be written is re-marked later. At the
end (``finish``) the journal's reserve is released for what is still held, and only what does not
fit even then is written out flagged ``not_stored``, never dropped (docs/streaming.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from edgehema.exceptions import StorageFullError
from edgehema.stream.journal import Journal

#: The journal note of a sample whose result went out unstored (flagged not_stored) at a stop.
NOT_STORED_NOTE = "not_stored: emitted unstored at a stop on a full disk"


@dataclass
class Held:
    """A result on its way out: stored, or held in memory while the storage is full."""

    row: int | None
    result: dict
    complete: bool
    tag: int
    sample_id: str
    instrument_id: str | None
    archive: str
    ack: bool  # acknowledge to the instrument once stored
    #: Recomputed from its archive at a start (not received in this run): if it cannot be stored it
    #: is not written out unstored, since the journal and archive still hold it for a later start,
    #: and a restart loop on a full disk would emit it again at every start.
    recovered: bool = False


class ResultStore:
    """``emit`` writes to the sinks (an OSError there leaves the result undelivered), ``acknowledge``
    ACKs a stored result to the instrument, ``overflow`` is told when more than ``max_held`` results
    are held (the stream then stops)."""

    def __init__(self, journal: Journal, emit: Callable[[dict], None], acknowledge: Callable[[Held], None],
                 log: Callable[..., None], max_held: int, overflow: Callable[[], None]):
        self.journal = journal
        self.emit, self.acknowledge, self.log = emit, acknowledge, log
        self.max_held, self.overflow = max_held, overflow
        self.held: list[Held] = []  # results waiting for storage, in order
        self.unmarked: list[int] = []  # rows emitted but not yet marked so in the journal
        self.undelivered: list[tuple[int, dict]] = []  # stored, but the sink could not write them
        self.full: str | None = None  # why, while the storage cannot take writes
        self.last_try = 0.0

    @property
    def waiting(self) -> bool:
        """Results held or undelivered: worth a retry every second."""
        return bool(self.held or self.undelivered)

    def store(self, h: Held) -> bool:
        """Journal, then emit, then acknowledge. With the storage full, hold the result (in order)."""
        if self.held and h is not self.held[0]:
            self.retry()
            if self.held:  # still full: keep the order of results
                return self._hold(h)
        try:
            h.row = self._commit(h)
        except StorageFullError as exc:
            self.problem(str(exc))
            return self._hold(h)
        if self.full:
            self.log(f"storage available again: results are stored and acknowledged ({len(self.held)} still held)")
            self.full = None
        self.deliver(h.row, h.result)
        self.acknowledge(h)
        return True

    def _commit(self, h: Held) -> int:
        return self.journal.commit_result(h.row, h.result, h.complete, h.tag, h.sample_id, h.instrument_id, h.archive)

    def _hold(self, h: Held) -> bool:
        if not any(x is h for x in self.held):
            self.held.append(h)
        self.log(f"storage full: {len(self.held)} result(s) held in memory and not acknowledged until stored "
                 f"({self.full})", kind="storage_full")
        if len(self.held) > self.max_held:
            self.overflow()  # cannot go on: finish() writes them out flagged and ends with an error
        return False

    def retry(self) -> None:
        """Store what is held, deliver what is undelivered, mark what is unmarked: as far as it goes."""
        self.last_try = time.monotonic()
        while self.held:
            h = self.held[0]
            try:
                h.row = self._commit(h)
            except StorageFullError as exc:
                self.full = str(exc)
                break
            self.held.pop(0)
            self.deliver(h.row, h.result)
            self.acknowledge(h)
        undelivered, self.undelivered = self.undelivered, []
        for row, result in undelivered:
            self.deliver(row, result)
        for row in list(self.unmarked):
            try:
                self.journal.mark_emitted(row)
                self.unmarked.remove(row)
            except StorageFullError:
                break
        if not self.held and not self.undelivered and self.full:
            self.log("storage available again: every held result is stored")
            self.full = None

    def deliver(self, row: int, result: dict) -> None:
        """Write a stored result to the sinks, then record that it went out (re-emitted after a restart
        if that record cannot be written). A sink that cannot write (an output file on a full disk)
        leaves the result stored and undelivered: it is retried, and emitted at the next start."""
        try:
            self.emit(result)
        except OSError as exc:
            self.problem(f"cannot write the result to the output: {exc.strerror or exc}")
            self.undelivered.append((row, result))
            return
        try:
            self.journal.mark_emitted(row)
        except StorageFullError as exc:
            self.problem(str(exc))
            self.unmarked.append(row)

    def problem(self, why: str) -> None:
        if not self.full:
            self.log(f"storage full or failing: {why}; results are kept in memory and not acknowledged until stored")
        self.full = why

    def finish(self) -> int:
        """The last try: the reserve's space for what is still held, then what still cannot be stored
        written out flagged not_stored. Returns how many went out unstored."""
        self.retry()
        if (self.held or self.undelivered or self.unmarked) and self.journal.release_reserve():
            # The last resort: the reserve's space takes what is held, whole, and records it emitted.
            self.log(f"storage full: the journal's reserve released for {len(self.held)} held result(s)")
            self.retry()
        held, self.held = self.held, []
        for h in held:
            if h.recovered:
                self.log(f"storage full: sample {h.sample_id} stays open in the journal, with its archive; it is "
                         f"reported at a start that can store it")
        unstored = [h for h in held if not h.recovered]
        for h in unstored:
            h.result.setdefault("flags", []).append("not_stored")
            h.result.setdefault("flag_details", {})["not_stored"] = (
                f"storage full: this result could not be written to the journal ({self.full})")
            h.result["complete"] = False
            self.emit(h.result)
            if h.row is not None:
                try:  # a few bytes, where the result did not fit: the next start must not emit it again
                    self.journal.leave_open(h.row, NOT_STORED_NOTE)
                except StorageFullError:
                    pass
        return len(unstored)
