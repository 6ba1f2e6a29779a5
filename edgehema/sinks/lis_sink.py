"""Results to a laboratory information system: queued in the outbox, sent by the forwarder.

``write`` returns once the result is durably queued (SQLite, synchronous), not once the LIS has
it: the instrument's stream never waits for a LIS. ``close`` gives the forwarder ``wait_s`` seconds
to empty the queue; what is still pending stays queued for the next start or ``edgehema outbox --send``.

Two kinds of result never go to the LIS on their own: one whose sample id the instrument never sent
(``sample_id_source`` ``host``: a sample whose SAMPLE_BEGIN was lost is known by its tag only,
``tag-N``, and a LIS would file its counts under no patient), which is held for review in the
outbox (``edgehema outbox --held``); and, with ``policy="hold"``, another result of a sample the
LIS was given already (a file classified again with other settings), which is reported and not
sent unless asked (``policy="correct"``: sent as a corrected result).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

from edgehema.exceptions import StorageFullError
from edgehema.lis import open_destination
from edgehema.lis.forwarder import Forwarder
from edgehema.lis.outbox import Outbox


class LisSink:
    def __init__(self, url: str, outbox_path: str | Path, log: Callable[[str], None] = lambda s: None,
                 wait_s: float = 30.0, policy: str = "new", resend: bool = False, **forwarder_options):
        self.destination = open_destination(url)
        self.outbox = Outbox(outbox_path)
        self.wait_s = wait_s
        self.log = log
        self.policy = policy
        self.resend = resend
        #: What this run did: queued (new messages), already (queued or sent before), held (not sent).
        self.tally = {"queued": 0, "corrected": 0, "already": 0, "held": 0, "review": 0}
        self.forwarder = Forwarder(outbox_path, self.destination, log, **forwarder_options).start()

    def write(self, result: dict) -> None:
        try:
            if result.get("sample_id_source") == "host":
                self.outbox.hold_for_review(self.destination.url, result,
                                            "the instrument sent no sample id for this sample (SAMPLE_BEGIN lost)")
                self.tally["review"] += 1
                self.log(f"LIS {self.destination.url}: sample {result.get('sample_id')} has no sample id from the "
                         f"instrument: not sent, held for review in {self.outbox.path} (edgehema outbox --held)")
                return
            done = self.outbox.enqueue(self.destination.url, result, self.destination.render, self.policy,
                                       self.resend)
        except StorageFullError as exc:
            # As an output file on a full disk: the stream keeps the result and tries again.
            raise OSError(errno.ENOSPC, str(exc)) from None
        if done.action == "queued":
            self.tally["corrected" if done.corrected else "queued"] += 1
        else:
            self.tally[done.action] += 1
        if done.action == "held":
            self.log(f"LIS {self.destination.url}: sample {result.get('sample_id')} was given to the LIS before "
                     f"(message {done.control_id}, {done.status}) with another result: not sent again "
                     f"(--lis-correct sends it as a corrected result)")
        self.forwarder.wake()

    def pending(self) -> int:
        return self.outbox.count("pending", self.destination.url)

    def close(self) -> None:
        self.forwarder.drain(self.wait_s)
        self.forwarder.stop()
        self.left = {"pending": self.pending(), "failed": self.outbox.count("failed", self.destination.url)}
        if self.left["pending"] or self.left["failed"]:
            self.log(f"LIS {self.destination.url}: {self.left['pending']} result(s) still pending, "
                     f"{self.left['failed']} refused by the LIS; queued in {self.outbox.path} "
                     f"(edgehema outbox --db {self.outbox.path})")
        self.outbox.close()
