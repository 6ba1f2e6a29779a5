"""Sends the outbox to one LIS, oldest first, until each message is acknowledged.

Unreachable, silent or disconnecting LIS: the message stays pending and is tried again after a
pause that doubles up to ``max_pause_s`` (an LIS down for an hour gets every result when it comes
back, in order). A LIS that refuses a message (AE/AR) gets it again ``max_rejections`` times, then it
is marked failed and the queue moves on (``edgehema outbox`` lists it; ``--resend`` queues it again).
Every resend carries the message's original control id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Callable

from edgehema._utils.log_limit import RateLimitedLog
from edgehema.exceptions import LisRejected
from edgehema.lis.outbox import Outbox

MAX_REJECTIONS = 3


class Forwarder:
    def __init__(self, outbox_path, destination, log: Callable[[str], None] = lambda s: None,
                 first_pause_s: float = 0.5, max_pause_s: float = 30.0, max_rejections: int = MAX_REJECTIONS):
        self.outbox_path = outbox_path
        self.destination = destination
        self.log = log
        # An LIS down for an hour is one line, then one a minute with how many tries failed.
        self._limited = RateLimitedLog(log, window=60.0)
        self.first_pause_s = first_pause_s
        self.max_pause_s = max_pause_s
        self.max_rejections = max_rejections
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0
        self.last_problem: str | None = None

    def start(self) -> "Forwarder":
        self._thread = threading.Thread(target=self._run, name="lis-forwarder", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        outbox = Outbox(self.outbox_path)  # a connection of this thread's own
        pause = self.first_pause_s
        try:
            while not self._stop.is_set():
                msg = outbox.next_pending(self.destination.url)
                if msg is None:
                    self._idle.set()
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                self._idle.clear()
                try:
                    ack = self.destination.send(msg.message, msg.control_id)
                except LisRejected as exc:
                    failed = msg.rejections + 1 >= self.max_rejections
                    outbox.attempted(msg.id, f"LIS refused: {exc}", rejected=True, failed=failed)
                    self._problem(f"LIS {self.destination.url} refused message {msg.control_id} "
                                  f"(sample {msg.sample_id}): {exc}" + ("; marked failed" if failed else "; will resend"),
                                  "" if failed else f"refused {msg.id}")
                    self.failed += failed
                    if not failed:
                        self._stop.wait(pause)
                    continue
                except (OSError, EOFError, TimeoutError, asyncio.TimeoutError, ValueError) as exc:
                    # refused, reset, timed out, closed, or an answer that is not an HL7 ACK
                    why = _why(exc, self.destination.timeout)
                    outbox.attempted(msg.id, why)
                    self._problem(f"LIS {self.destination.url} not reached ({why}); "
                                  f"{outbox.count('pending', self.destination.url)} result(s) pending, "
                                  f"next try in {pause:.0f} s", f"unreached {why}")
                    self._stop.wait(pause)
                    pause = min(pause * 2, self.max_pause_s)
                    continue
                outbox.sent(msg.id, ack)
                self.sent += 1
                pause = self.first_pause_s
                if self.last_problem:
                    self._limited.flush()
                    self.log(f"LIS {self.destination.url} acknowledges again")
                    self.last_problem = None
        finally:
            outbox.close()

    def _problem(self, line: str, kind: str = "") -> None:
        """Said once, not once per try: the same trouble again is counted (``kind``), not printed."""
        if line != self.last_problem:
            self._limited(line, kind)
        self.last_problem = line

    def drain(self, timeout_s: float) -> None:
        """Wait until nothing is pending (or ``timeout_s`` passes)."""
        deadline = time.monotonic() + timeout_s
        self.wake()
        time.sleep(0.05)
        while time.monotonic() < deadline and not self._idle.is_set():
            self._idle.wait(0.1)

    def stop(self) -> None:
        self._limited.flush()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.destination.timeout * 3 + 5)


def _why(exc: BaseException, timeout: float) -> str:
    """What went wrong, in a lab engineer's words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the LIS listening?)"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionResetError):
        return "the LIS reset the connection"
    return str(exc) or type(exc).__name__
