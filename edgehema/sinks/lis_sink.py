"""Results to a laboratory information system: queued in the outbox, sent by the forwarder.

``write`` returns once the result is durably queued (SQLite, synchronous), not once the LIS has
it: the instrument's stream never waits for a LIS. ``close`` gives the forwarder ``wait_s`` seconds
to empty the queue; what is still pending stays queued for the next start or ``edgehema outbox --send``.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable

from ..exceptions import StorageFullError
from ..lis import open_destination
from ..lis.forwarder import Forwarder
from ..lis.outbox import Outbox


class LisSink:
    def __init__(self, url: str, outbox_path: str | Path, log: Callable[[str], None] = lambda s: None,
                 wait_s: float = 30.0, **forwarder_options):
        self.destination = open_destination(url)
        self.outbox = Outbox(outbox_path)
        self.wait_s = wait_s
        self.log = log
        self.forwarder = Forwarder(outbox_path, self.destination, log, **forwarder_options).start()

    def write(self, result: dict) -> None:
        try:
            self.outbox.enqueue(self.destination.url, result, self.destination.render)
        except StorageFullError as exc:
            # As an output file on a full disk: the stream keeps the result and tries again.
            raise OSError(errno.ENOSPC, str(exc)) from None
        self.forwarder.wake()

    def pending(self) -> int:
        return self.outbox.count("pending", self.destination.url)

    def close(self) -> None:
        self.forwarder.drain(self.wait_s)
        self.forwarder.stop()
        pending, failed = self.pending(), self.outbox.count("failed", self.destination.url)
        if pending or failed:
            self.log(f"LIS {self.destination.url}: {pending} result(s) still pending, {failed} refused by the LIS; "
                     f"queued in {self.outbox.path} (edgehema outbox --db {self.outbox.path})")
        self.outbox.close()
