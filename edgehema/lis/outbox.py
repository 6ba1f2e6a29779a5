"""The outbound queue to the LIS, in SQLite (the stream's journal database, or a file of its own).

A result is queued once per destination. Its key (:func:`result_key`) is the sha256 of its JSON
without what changes from one run of the same file, model and settings to the next (the seconds
it took, the folder the file was read from), so a result emitted again after a restart, or the
same file classified again after a kill, is not queued twice: what was acknowledged is not sent
again, what was not is sent under the control id it was given first.

The message is rendered when queued, with a message control id that never changes (a prefix drawn
once per database, then the row number): a resend after a lost acknowledgement carries the same id,
so the LIS can tell a resend from a new result. Messages are ``pending`` until acknowledged
(``sent``), or ``failed`` after the LIS rejected them too often; ``edgehema outbox --resend`` puts
failed ones back in the queue.

A different result for a sample already queued for the destination is, by the caller's
``policy``: ``new`` (the stream: an instrument that measures a sample again sends a new result),
``hold`` (not queued; the caller says so) or ``correct`` (queued as a corrected result, HL7
OBR-25 / ASTM result status ``C``, under a new control id). A deliberate resend of the same
result is ``correct`` too: never a second final result.
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

from edgehema._utils.sqlite import connect, execute
from edgehema.exceptions import EdgehemaError

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
CREATE INDEX IF NOT EXISTS outbox_sample ON outbox(destination, sample_id);
CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    result_key TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    result TEXT NOT NULL,
    held_at TEXT NOT NULL,
    released_as INTEGER,
    UNIQUE (destination, result_key)
);
"""

STATUSES = ("pending", "sent", "failed")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: Result fields that differ between two runs of the same file, model and settings.
VOLATILE = ("seconds", "scattergram", "scattergram_error")


def result_key(result: dict) -> str:
    """The identity of a result: the same file, model and settings give the same key on every run."""
    stable = {k: v for k, v in result.items() if k not in VOLATILE}
    source = stable.get("source")
    if isinstance(source, str) and not source.startswith("stream "):
        # The same file named from another folder (relative, absolute) is the same result.
        stable["source"] = _file_name(source)
    if isinstance(stable.get("sources"), list):  # a smear slide: its images, however they were named
        stable["sources"] = [_file_name(s) if isinstance(s, str) else s for s in stable["sources"]]
    return hashlib.sha256(json.dumps(stable, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Queued:
    """What :meth:`Outbox.enqueue` did with a result: ``queued`` (a new row, its id), ``already``
    (queued before: its row, its status), ``held`` (another result of the sample was queued before;
    not queued, by policy ``hold``)."""

    action: str
    row: int
    status: str
    control_id: str
    corrected: bool = False


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

    def enqueue(self, destination: str, result: dict, render: Callable[..., str], policy: str = "new",
                resend: bool = False) -> Queued:
        """Queue ``result`` for ``destination``, rendered by ``render(result, control_id, status)``.

        ``policy`` says what a different result of a sample already queued for ``destination``
        becomes (module docstring); ``resend`` sends a result that was queued before again, as a
        corrected result (unless a correction of it is still waiting to go)."""
        if policy not in ("new", "hold", "correct"):
            raise ValueError(f"unknown policy {policy!r}")
        key = result_key(result)
        sample_id = str(result.get("sample_id") or "")
        self._write("BEGIN IMMEDIATE")
        try:
            same = self.db.execute("SELECT id, status, control_id FROM outbox WHERE destination = ? AND "
                                   "(result_key = ? OR result_key LIKE ?) ORDER BY id DESC",
                                   (destination, key, key + ":C%")).fetchall()
            corrected = False
            if same:
                last = same[0]
                if not resend or last[1] == "pending":
                    self._write("ROLLBACK")
                    return Queued("already", last[0], last[1], last[2])
                corrected, row_key = True, f"{key}:C{len(same)}"
            else:
                row_key = key
                other = self.db.execute("SELECT id, status, control_id FROM outbox WHERE destination = ? AND "
                                        "sample_id = ? ORDER BY id DESC LIMIT 1", (destination, sample_id)).fetchone()
                if other is not None and sample_id and policy != "new":
                    if policy == "hold":
                        self._write("ROLLBACK")
                        return Queued("held", other[0], other[1], other[2])
                    corrected = True
            cur = self._write("INSERT INTO outbox (destination, result_key, control_id, sample_id, message, status, "
                              "queued_at) VALUES (?, ?, '', ?, '', 'pending', ?)",
                              (destination, row_key, sample_id, _now()))
            row = int(cur.lastrowid)
            control_id = f"{self.prefix}{row:012d}"
            self._write("UPDATE outbox SET control_id = ?, message = ? WHERE id = ?",
                        (control_id, render(result, control_id, "C" if corrected else "F"), row))
            self._write("COMMIT")
            return Queued("queued", row, "pending", control_id, corrected)
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def hold_for_review(self, destination: str, result: dict, reason: str) -> None:
        """Keep a result that must not reach the LIS as it is (no sample id): a person reviews it and
        releases it under the right id (:meth:`release`). Held once, however often it is emitted."""
        self._write("INSERT OR IGNORE INTO held (destination, result_key, sample_id, reason, result, held_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (destination, result_key(result), str(result.get("sample_id") or ""),
                                                  reason, json.dumps(result, separators=(",", ":")), _now()))

    def held(self) -> list[dict]:
        """Results held for review: id, destination, sample_id, reason, held_at, released_as (a message id)."""
        cols = ("id", "destination", "sample_id", "reason", "held_at", "released_as")
        return [dict(zip(cols, r)) for r in self.db.execute(f"SELECT {', '.join(cols)} FROM held ORDER BY id")]

    def release(self, held_id: int, sample_id: str, render: Callable[..., str]) -> Queued:
        """Queue held result ``held_id`` under the sample id a person gave it."""
        row = self.db.execute("SELECT destination, result, released_as FROM held WHERE id = ?", (held_id,)).fetchone()
        if row is None:
            raise EdgehemaError(f"{self.path}: no held result {held_id} (edgehema outbox --held lists them)")
        if row[2] is not None:
            raise EdgehemaError(f"{self.path}: held result {held_id} was released already, as message {row[2]}")
        result = json.loads(row[1])
        result["flag_details"] = dict(result.get("flag_details") or {})
        result["flag_details"]["sample_id_assigned"] = (
            f"sample id {sample_id} assigned at review; the instrument reported it as {result.get('sample_id')}")
        result["flags"] = list(result.get("flags") or []) + ["sample_id_assigned"]
        result["sample_id"], result["sample_id_source"] = sample_id, "review"
        done = self.enqueue(row[0], result, render, policy="hold")
        if done.action != "held":
            self._write("UPDATE held SET released_as = ? WHERE id = ?", (done.row, held_id))
        return done

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
