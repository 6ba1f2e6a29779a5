"""The device's SQLite stores (the stream's result journal, the LIS outbox, the smear journal):
opened alike (WAL, synchronous writes: a stored result survives power loss) and failing alike (a
full or failing disk is StorageFullError, anything else one EdgehemaError line naming the file)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from edgehema.exceptions import EdgehemaError, StorageFullError


def storage_failure(exc: BaseException) -> bool:
    """True when ``exc`` says the storage cannot take a write (full, over quota, I/O error)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "full" in text or "disk i/o" in text or "readonly" in text or "read-only" in text
    return False


def connect(path: Path, what: str, folder_noun: str, schema: str) -> sqlite3.Connection:
    """Open (creating) the store ``what`` (e.g. "result journal") at ``path`` with ``schema``."""
    if not path.parent.is_dir():
        # A mistyped path should not silently grow a directory tree on the device.
        raise EdgehemaError(f"{path}: the {folder_noun}'s folder {path.parent} does not exist")
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
        return db
    except sqlite3.Error as exc:
        raise EdgehemaError(f"{path}: cannot open the {what}: {exc}") from None


def execute(db: sqlite3.Connection, path: Path, what: str, sql: str, args: tuple = ()) -> sqlite3.Cursor:
    """One write; a full or failing disk raises StorageFullError (the caller holds the result)."""
    try:
        return db.execute(sql, args)
    except sqlite3.Error as exc:
        if storage_failure(exc):
            raise StorageFullError(f"{path}: cannot write the {what}: {exc}") from None
        raise EdgehemaError(f"{path}: {what}: {exc}") from None
