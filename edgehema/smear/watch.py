"""Count every image dropped into a folder, as microscope cameras and digital-morphology units
deliver them, with the event stream's guarantees: a result is committed to a SQLite journal before
it is written out; after a crash, results stored but not written are written at the next start;
an image already counted is not counted again (the same path, size and modification time); an image
is read only once its size and time have not changed for ``settle_s`` seconds (a camera or a network
share still writing it), and one that cannot be decoded while it is younger than ``retry_s`` is
looked at again rather than reported; a bad image is one error line, recorded, and the others go on.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgehema._utils.sqlite import connect, execute
from edgehema.exceptions import EdgehemaError
from edgehema.smear.image_io import EXTENSIONS
from edgehema.smear.pipeline import count_image

SCHEMA = """
CREATE TABLE IF NOT EXISTS smear_images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('counted', 'refused')),
    result TEXT,
    error TEXT,
    counted_at TEXT NOT NULL,
    emitted_at TEXT,
    UNIQUE (path, size, mtime_ns)
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SmearJournal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = connect(self.path, "smear journal", "journal", SCHEMA)

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        return execute(self.db, self.path, "smear journal", sql, args)

    def seen(self, path: Path, size: int, mtime_ns: int) -> bool:
        return self.db.execute("SELECT 1 FROM smear_images WHERE path = ? AND size = ? AND mtime_ns = ?",
                               (str(path), size, mtime_ns)).fetchone() is not None

    def record(self, path: Path, size: int, mtime_ns: int, result: dict | None, error: str | None) -> int:
        cur = self._write("INSERT OR IGNORE INTO smear_images (path, size, mtime_ns, status, result, error, counted_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (str(path), size, mtime_ns, "counted" if result else "refused",
                           json.dumps(result, separators=(",", ":")) if result else None, error, _now()))
        return int(cur.lastrowid)

    def emitted(self, row: int) -> None:
        self._write("UPDATE smear_images SET emitted_at = ? WHERE id = ?", (_now(), row))

    def unemitted(self) -> list[tuple[int, dict]]:
        return [(r[0], json.loads(r[1])) for r in self.db.execute(
            "SELECT id, result FROM smear_images WHERE status = 'counted' AND emitted_at IS NULL ORDER BY id")]

    def close(self) -> None:
        self.db.close()


def watch(folder: Path, journal: SmearJournal, emit: Callable[[dict], None], error: Callable[[str], None],
          engine: str = "model", interval: float = 0.5, max_images: int | None = None,
          idle_exit: float | None = None, stop: Callable[[], bool] = lambda: False,
          on_image: Callable[[dict, object], None] | None = None, settle_s: float = 1.0,
          retry_s: float = 10.0, stain: str = "auto", overlap: str = "none", scale: dict | None = None) -> int:
    """Count images as they arrive in ``folder`` until stopped; returns how many were counted.
    ``scale``: um_per_px, microscope, species for count_image (the images' scale)."""
    if not folder.is_dir():
        raise EdgehemaError(f"{folder}: no such folder to watch")
    for row, result in journal.unemitted():  # stored before a crash, never written: written now
        emit(result)
        journal.emitted(row)
    sizes: dict[Path, tuple[tuple[int, int], float]] = {}  # path -> ((size, mtime), first seen so)
    counted = 0
    last_new = time.monotonic()
    while not stop():
        found_new = False
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS):
            try:
                st = path.stat()
            except OSError:
                continue  # gone again
            key = (st.st_size, st.st_mtime_ns)
            if journal.seen(path, *key):
                continue
            now = time.monotonic()
            if path not in sizes or sizes[path][0] != key:  # new, or still being written
                sizes[path] = (key, now)
            found_new = True
            if now - sizes[path][1] < settle_s:
                continue
            try:
                result, image = count_image(path, engine, stain=stain, overlap=overlap, **(scale or {}))
            except EdgehemaError as exc:
                if time.time() - st.st_mtime < retry_s:
                    continue  # perhaps not whole yet: looked at again next round
                journal.record(path, *key, None, str(exc))
                error(str(exc))
                continue
            row = journal.record(path, *key, result, None)  # journaled first, then written out
            emit(result)
            journal.emitted(row)
            if on_image is not None:
                on_image(result, image)
            counted += 1
            if max_images is not None and counted >= max_images:
                return counted
        if found_new:
            last_new = time.monotonic()
        elif idle_exit is not None and time.monotonic() - last_new >= idle_exit:
            return counted
        time.sleep(interval)
    return counted
