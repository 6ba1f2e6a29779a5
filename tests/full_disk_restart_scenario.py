"""Run by tests/test_stream_storage.py inside a private mount namespace (``unshare -rm``): issue 32
item 3 as a user met it. The journal and archives live on a 4 MB tmpfs that the archives of 12
samples of 30,000 events fill; the stream stops with results it could not store, then starts again
three times (as systemd's Restart=always would).

Prints one JSON object with what each run emitted and what the journal holds; the test asserts on it.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from full_disk_scenario import instrument, small_disk  # the script's own folder is on sys.path

from edgehema.model.classifier import Classifier
from edgehema.simulator.emulator import InstrumentEmulator
from edgehema.exceptions import StorageFullError
from edgehema.stream.runner import StreamConfig, StreamRunner


def run(disk: Path, clf, port: str, **kw) -> dict:
    out, logs, error = [], [], None
    cfg = StreamConfig(port=port, journal=disk / "j.sqlite", archive_dir=disk / "archive", reconnect=False, **kw)
    try:
        StreamRunner(cfg, out.append, log=logs.append, classifier=clf).run()
    except StorageFullError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        error = f"{type(exc).__name__}: {exc}"
    return {"results": [{"sample_id": r["sample_id"], "events": r["events"]["total"], "flags": r["flags"],
                         "details": r.get("flag_details", {})} for r in out],
            "logs": logs, "error": error}


def main(root: str, reserve: int) -> None:
    disk = small_disk(root, "4m")
    clf = Classifier()
    emu = InstrumentEmulator("cat", samples=12, events=30_000, seed=12)
    t, box = instrument(emu, 0.0)
    runs = [run(disk, clf, f"socket://127.0.0.1:{box['port']}", max_samples=12, idle_exit=3.0, max_held=3,
                journal_reserve=reserve)]
    t.join(10)
    for _ in range(3):  # the instrument is gone; the host restarts
        runs.append(run(disk, clf, "socket://127.0.0.1:9", journal_reserve=reserve))
    with sqlite3.connect(disk / "j.sqlite") as db:
        rows = [{"sample_id": r[0], "status": r[1], "emitted": bool(r[2]),
                 "events": json.loads(r[3])["events"]["total"] if r[3] else None}
                for r in db.execute("SELECT sample_id, status, emitted_at, result FROM samples ORDER BY tag")]
    print(json.dumps({"runs": runs, "rows": rows, "truth_ids": [x["sample_id"] for x in emu.truths]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
