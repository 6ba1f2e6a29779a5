"""Embedded SQLite journal (WAL): a result is committed here before it is reported anywhere.

One row per sample attempt: ``open`` when its SAMPLE_BEGIN arrives, then ``complete`` or
``incomplete`` with the result JSON. After a crash (kill -9), rows still ``open`` are the samples
that were interrupted; recovery recomputes them from their archives and reports them incomplete.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from ..exceptions import EdgehemaError

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
    result TEXT
);
CREATE INDEX IF NOT EXISTS samples_status ON samples(status);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a reported result survives power loss
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise EdgehemaError(f"{self.path}: cannot open the result journal: {exc}") from None

    def open_sample(self, tag: int, sample_id: str, instrument_id: str, archive: str) -> int:
        cur = self.db.execute(
            "INSERT INTO samples (tag, sample_id, instrument_id, status, archive, opened_at) VALUES (?, ?, ?, 'open', ?, ?)",
            (tag, sample_id, instrument_id, archive, _now()),
        )
        return int(cur.lastrowid)

    def commit_result(self, row: int, result: dict, complete: bool) -> None:
        self.db.execute(
            "UPDATE samples SET status = ?, closed_at = ?, result = ? WHERE id = ?",
            ("complete" if complete else "incomplete", _now(), json.dumps(result, separators=(",", ":")), row),
        )

    def interrupted(self) -> list[tuple[int, int, str, str]]:
        """(row, tag, sample_id, archive) of samples left open by a crash."""
        return list(self.db.execute("SELECT id, tag, sample_id, archive FROM samples WHERE status = 'open' ORDER BY id"))

    def results(self) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.execute(
            "SELECT result FROM samples WHERE result IS NOT NULL ORDER BY id")]

    def close(self) -> None:
        self.db.close()
