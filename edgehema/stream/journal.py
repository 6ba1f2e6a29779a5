"""Embedded SQLite journal (WAL): a result is committed here before it is reported anywhere.

One row per sample attempt: ``open`` when its SAMPLE_BEGIN arrives, then ``complete`` or
``incomplete`` with the result JSON, then ``emitted_at`` once the result has been written to the
sinks. After a crash (kill -9), rows still ``open`` are the samples that were interrupted (recovery
recomputes them from their archives and reports them incomplete), and rows with a result but no
``emitted_at`` are results that were stored but never delivered: they are emitted at the next start,
in the order they were stored (``stored_seq``). That is not row order: a sample opened while the
disk was full gets its row only when its result is stored, after rows of samples opened later.
The journal also remembers each instrument's last HELLO, so that a host restarted mid-session can
still decode (flagged) what an instrument sends before it introduces itself again.

A write that fails because the storage is full (or failing) raises :class:`StorageFullError`; every
other method keeps working for reading, so a full disk never stops start-up.

The journal keeps a reserve (:meth:`Journal.keep_reserve`): a file of zeros beside it, released
when the stream must stop with results it could not store, so that those results are stored
whole (and recorded as emitted) rather than emitted unstored and taken back, cut, from their
archives at every later start.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from edgehema._utils.sqlite import connect, execute
from edgehema.exceptions import EdgehemaError

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    instrument_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('open', 'complete', 'incomplete')),
    archive TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    closed_at TEXT,
    result TEXT,
    emitted_at TEXT,
    stored_seq INTEGER,
    note TEXT
);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status);
CREATE TABLE IF NOT EXISTS instruments (
    instrument_id TEXT PRIMARY KEY,
    hello BLOB NOT NULL,
    received_at TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self.db = connect(self.path, "result journal", "journal", SCHEMA)
        try:
            self._migrate()
        except sqlite3.Error as exc:
            raise EdgehemaError(f"{self.path}: cannot open the result journal: {exc}") from None

    def _migrate(self) -> None:
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(samples)")}
        if "emitted_at" not in cols:
            # Journals from before emission was recorded: their results were emitted when stored.
            self.db.execute("ALTER TABLE samples ADD COLUMN emitted_at TEXT")
            self.db.execute("UPDATE samples SET emitted_at = closed_at WHERE result IS NOT NULL")
        if "note" not in cols:
            self.db.execute("ALTER TABLE samples ADD COLUMN note TEXT")
        if "stored_seq" not in cols:
            # Journals from before the store order was recorded: row order is the best that is known.
            self.db.execute("ALTER TABLE samples ADD COLUMN stored_seq INTEGER")
            self.db.execute("UPDATE samples SET stored_seq = id WHERE result IS NOT NULL")

    def keep_reserve(self, size: int) -> str | None:
        """Make sure the reserve file holds ``size`` bytes; None, or why it cannot (storage full)."""
        try:
            have = self.reserve_path.stat().st_size if self.reserve_path.exists() else 0
            if have >= size:
                return None
            with open(self.reserve_path, "ab") as fh:
                block = b"\0" * 65536
                while have < size:  # zeros written, not a sparse file: the space is really taken
                    have += fh.write(block[: min(len(block), size - have)])
                fh.flush()
                os.fsync(fh.fileno())
            return None
        except OSError as exc:
            return f"{self.reserve_path}: {exc.strerror or exc}"

    def release_reserve(self) -> bool:
        """Free the reserve's space for the journal's last writes; True if there was one."""
        try:
            self.reserve_path.unlink()
            return True
        except OSError:
            return False

    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        return execute(self.db, self.path, "result journal", sql, args)

    def open_sample(self, tag: int, sample_id: str, instrument_id: str, archive: str) -> int:
        cur = self._write(
            "INSERT INTO samples (tag, sample_id, instrument_id, status, archive, opened_at) VALUES (?, ?, ?, 'open', ?, ?)",
            (tag, sample_id, instrument_id, archive, _now()),
        )
        return int(cur.lastrowid)

    def commit_result(self, row: int | None, result: dict, complete: bool, tag: int = 0, sample_id: str = "",
                      instrument_id: str | None = None, archive: str = "") -> int:
        """Store a result; ``row`` None (its SAMPLE_BEGIN could not be journaled) inserts the whole row."""
        status = "complete" if complete else "incomplete"
        text = json.dumps(result, separators=(",", ":"))
        # The store order, taken in the same statement as the write (one writer: the stream).
        seq = "(SELECT COALESCE(MAX(stored_seq), 0) + 1 FROM samples)"
        if row is None:
            now = _now()
            cur = self._write(
                "INSERT INTO samples (tag, sample_id, instrument_id, status, archive, opened_at, closed_at, result, "
                f"stored_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {seq})",
                (tag, sample_id, instrument_id, status, archive, now, now, text))
            return int(cur.lastrowid)
        self._write(f"UPDATE samples SET status = ?, closed_at = ?, result = ?, stored_seq = {seq} WHERE id = ?",
                    (status, _now(), text, row))
        return row

    def mark_emitted(self, row: int) -> None:
        self._write("UPDATE samples SET emitted_at = ? WHERE id = ?", (_now(), row))

    def leave_open(self, row: int, note: str) -> None:
        """The host stops with this sample open on purpose (a signal): the next start joins the
        instrument's continuation to it, or reports it with ``note`` as the reason."""
        self._write("UPDATE samples SET note = ? WHERE id = ?", (note, row))

    def interrupted(self) -> list[tuple[int, int, str, str, str | None]]:
        """(row, tag, sample_id, archive, note) of samples left open by a crash or a stop."""
        return list(self.db.execute("SELECT id, tag, sample_id, archive, note FROM samples WHERE status = 'open' "
                                    "ORDER BY id"))

    def unemitted(self) -> list[tuple[int, dict]]:
        """(row, result) of results stored but never written to the sinks, in the order they were stored."""
        return [(r[0], json.loads(r[1])) for r in self.db.execute(
            "SELECT id, result FROM samples WHERE result IS NOT NULL AND emitted_at IS NULL ORDER BY stored_seq, id")]

    def results(self) -> list[dict]:
        """Every stored result, in the order stored."""
        return [json.loads(r[0]) for r in self.db.execute(
            "SELECT result FROM samples WHERE result IS NOT NULL ORDER BY stored_seq, id")]

    def remember_hello(self, instrument_id: str, frame: bytes) -> None:
        self._write("INSERT OR REPLACE INTO instruments (instrument_id, hello, received_at) VALUES (?, ?, ?)",
                    (instrument_id, frame, _now()))

    def last_hello(self) -> tuple[bytes, str] | None:
        """(HELLO frame, when it was received) of the instrument heard from last."""
        row = self.db.execute("SELECT hello, received_at FROM instruments ORDER BY received_at DESC LIMIT 1").fetchone()
        return (bytes(row[0]), row[1]) if row else None

    def close(self) -> None:
        self.db.close()
