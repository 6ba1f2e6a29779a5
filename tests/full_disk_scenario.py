"""Run by tests/test_stream_storage.py inside a private mount namespace (``unshare -rm``): the stream's
journal and archives live on a 3 MB tmpfs that the scenario fills and frees while samples arrive.

Prints one JSON object with what happened; the test asserts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgehema.model.classifier import Classifier
from edgehema.simulator.emulator import InstrumentEmulator, serve_tcp
from edgehema.exceptions import StorageFullError
from edgehema.stream.runner import StreamConfig, StreamRunner


def fill(folder: Path) -> Path:
    """Take every free byte of the file system."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * 65536
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
        for size in (4096, 512, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return filler


def small_disk(root: str, size: str) -> Path:
    """A tmpfs of ``size`` mounted at ``root`` (in this private mount namespace)."""
    disk = Path(root)
    disk.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    return disk


def instrument(emu: InstrumentEmulator, rate: float) -> tuple[threading.Thread, dict]:
    """The emulator serving on a free TCP port: (its thread, {"port": the port})."""
    box, ready = {}, threading.Event()
    t = threading.Thread(target=serve_tcp, args=(emu, 0, rate),
                         kwargs={"ready": lambda p: (box.setdefault("port", p), ready.set()), "accept_timeout": 20},
                         daemon=True)
    t.start()
    ready.wait(10)
    return t, box


def main(root: str) -> None:
    disk = small_disk(root, "3m")
    clf = Classifier()
    emu = InstrumentEmulator("dog", samples=4, events=15_000, seed=21)
    t, box = instrument(emu, 150_000.0)
    results, logs = [], []
    state = {"filler": None, "held_max": 0, "freed_at_emit": None}

    def emit(r):
        results.append(r)
        if len(results) == 1:
            state["filler"] = fill(disk)  # the disk fills up after the first result

    cfg = StreamConfig(port=f"socket://127.0.0.1:{box['port']}", journal=disk / "j.sqlite", archive_dir=disk / "archive",
                       max_samples=4, idle_exit=5.0, reconnect=False)
    runner = StreamRunner(cfg, emit, log=logs.append, classifier=clf)

    def free_when_two_are_held():
        deadline = time.time() + 60
        while time.time() < deadline:
            state["held_max"] = max(state["held_max"], len(runner.store.held))
            if len(runner.store.held) >= 2:
                state["freed_at_emit"] = len(results)
                os.remove(state["filler"])
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=free_when_two_are_held, daemon=True)
    watcher.start()
    runner.run()
    t.join(10)
    import sqlite3

    with sqlite3.connect(disk / "j.sqlite") as db:
        # By tag: a sample opened while the disk was full gets its row only when its result is stored,
        # so row ids can run 1, 4, 2, 3 when the disk frees just before sample 4 opens (timing).
        rows = [list(r) for r in db.execute("SELECT tag, status, emitted_at IS NOT NULL FROM samples ORDER BY tag")]

    # Phase 2: a restart on a full disk with an interrupted sample and an undelivered result.
    if state["filler"] is not None and state["filler"].exists():
        os.remove(state["filler"])  # (the assertions on held_max say whether phase 1 freed it itself)
    with sqlite3.connect(disk / "j.sqlite") as db:
        db.execute("UPDATE samples SET emitted_at = NULL WHERE tag = 4")
        db.execute("INSERT INTO samples (tag, sample_id, instrument_id, status, archive, opened_at) "
                   "VALUES (9, 'dog-x', 'EMU', 'open', ?, 'now')", (str(disk / "archive" / "gone.ehw"),))
    fill(disk)
    again, logs2 = [], []
    cfg2 = StreamConfig(port="socket://127.0.0.1:9", journal=disk / "j.sqlite", archive_dir=disk / "archive",
                        reconnect=False)
    error = None
    try:
        StreamRunner(cfg2, again.append, log=logs2.append, classifier=clf).run()
    except StorageFullError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({
        "results": [{"tag": r["tag"], "sample_id": r["sample_id"], "flags": r["flags"], "complete": r["complete"],
                     "events": r["events"]["total"]} for r in results],
        "truth_ids": [x["sample_id"] for x in emu.truths],
        "acks": [tag for name, tag in emu.received if name == "ACK"],
        "held_max": state["held_max"], "freed_at_emit": state["freed_at_emit"],
        "rows": rows, "logs": logs,
        "restart": {"results": [{"sample_id": r["sample_id"], "flags": r["flags"]} for r in again],
                    "error": error, "logs": logs2},
    }))


if __name__ == "__main__":
    main(sys.argv[1])
