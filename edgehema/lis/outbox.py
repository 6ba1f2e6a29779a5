"""The outbound queue to the LIS, in SQLite (the stream's journal database, or a file of its own).

A result is queued once per destination: the key is the sha256 of its JSON, so a result emitted
again after a restart (stored in the journal, not yet marked emitted) is not queued twice. The
message is rendered when queued, with a message control id that never changes (a prefix drawn
once per database, then the row number): a resend after a lost acknowledgement carries the same id,
so the LIS can tell a resend from a new result. Messages are ``pending`` until acknowledged
(``sent``), or ``failed`` after the LIS rejected them too often; ``edgehema outbox --resend`` puts
failed ones back in the queue.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .._sqlite import connect, execute
from ..exceptions import EdgehemaError

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    result_key TEXT NOT NULL,
    control_id TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    rejections INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    ack TEXT,
    queued_at TEXT NOT NULL,
    sent_at TEXT,
    UNIQUE (destination, result_key)
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(destination, status, id);
CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

STATUSES = ("pending", "sent", "failed")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    destination: str
    control_id: str
    sample_id: str
    message: str
    status: str
    attempts: int
    rejections: int
    last_error: str | None
    ack: str | None
    queued_at: str
    sent_at: str | None


_COLUMNS = ("id, destination, control_id, sample_id, message, status, attempts, rejections, last_error, ack, "
            "queued_at, sent_at")


class Outbox:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = connect(self.path, "LIS outbox", "outbox", SCHEMA)
        try:
            row = self.db.execute("SELECT value FROM outbox_meta WHERE key = 'prefix'").fetchone()
            if row is None:
                # 6 characters of this database's own: control ids differ between devices.
                self.db.execute("INSERT OR IGNORE INTO outbox_meta VALUES ('prefix', ?)", (secrets.token_hex(3).upper(),))
                row = self.db.execute("SELECT value FROM outbox_meta WHERE key = 'prefix'").fetchone()
            self.prefix = row[0]
        except sqlite3.Error as exc:
            raise EdgehemaError(f"{self.path}: cannot open the LIS outbox: {exc}") from None

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        return execute(self.db, self.path, "LIS outbox", sql, args)

    def enqueue(self, destination: str, result: dict, render: Callable[[dict, str], str]) -> int | None:
        """Queue ``result`` for ``destination`` (rendered by ``render(result, control_id)``); None if it
        is queued already."""
        key = hashlib.sha256(json.dumps(result, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        self._write("BEGIN IMMEDIATE")
        try:
            if self.db.execute("SELECT 1 FROM outbox WHERE destination = ? AND result_key = ?",
                               (destination, key)).fetchone():
                self._write("ROLLBACK")
                return None
            cur = self._write("INSERT INTO outbox (destination, result_key, control_id, sample_id, message, status, "
                              "queued_at) VALUES (?, ?, '', ?, '', 'pending', ?)",
                              (destination, key, str(result.get("sample_id") or ""), _now()))
            row = int(cur.lastrowid)
            control_id = f"{self.prefix}{row:012d}"
            self._write("UPDATE outbox SET control_id = ?, message = ? WHERE id = ?",
                        (control_id, render(result, control_id), row))
            self._write("COMMIT")
            return row
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def next_pending(self, destination: str) -> OutboxMessage | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE destination = ? AND status = 'pending' "
                              "ORDER BY id LIMIT 1", (destination,)).fetchone()
        return OutboxMessage(*row) if row else None

    def attempted(self, msg_id: int, error: str, rejected: bool = False, failed: bool = False) -> None:
        """A try that did not end in an acknowledgement: the LIS not reached, or (``rejected``) refusing."""
        self._write("UPDATE outbox SET attempts = attempts + 1, rejections = rejections + ?, last_error = ?, "
                    "status = ? WHERE id = ?", (int(rejected), error[:500], "failed" if failed else "pending", msg_id))

    def sent(self, msg_id: int, ack: str) -> None:
        self._write("UPDATE outbox SET attempts = attempts + 1, status = 'sent', ack = ?, sent_at = ?, "
                    "last_error = NULL WHERE id = ?", (ack[:500], _now(), msg_id))

    def messages(self, status: str | None = None, destination: str | None = None) -> list[OutboxMessage]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if destination:
            where.append("destination = ?")
            args.append(destination)
        sql = f"SELECT {_COLUMNS} FROM outbox" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [OutboxMessage(*r) for r in self.db.execute(sql, args)]

    def count(self, status: str, destination: str | None = None) -> int:
        if destination is None:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE status = ?", (status,)).fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE status = ? AND destination = ?",
                                   (status, destination)).fetchone()[0])

    def resend(self, ids: list[int] | None = None) -> int:
        """Put failed messages (all, or those of ``ids``; sent ones too when named) back in the queue."""
        if ids is None:
            cur = self._write("UPDATE outbox SET status = 'pending', rejections = 0 WHERE status = 'failed'")
        else:
            marks = ",".join("?" * len(ids))
            cur = self._write(f"UPDATE outbox SET status = 'pending', rejections = 0 WHERE id IN ({marks})",
                              tuple(ids))
        return cur.rowcount

    def close(self) -> None:
        self.db.close()
