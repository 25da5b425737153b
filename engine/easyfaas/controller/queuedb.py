"""The durable async-invocation table in ``<state>/queue.db`` (SQLite, WAL, ``synchronous=FULL``).

Plain blocking code: ``asyncq`` runs every method on one dedicated thread, which makes it the
only writer. Each method is one transaction, committed before it returns, so an id handed to a
client is on disk.

States: ``queued`` → ``running`` → ``succeeded`` | ``failed`` (dead letter, kept), or back to
``queued`` for a retry; ``queued`` → ``expired`` when it waited longer than the max event age.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    qualifier TEXT NOT NULL,
    payload BLOB NOT NULL,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    result BLOB,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_at REAL NOT NULL,
    UNIQUE (function, idempotency_key)
);
CREATE INDEX IF NOT EXISTS invocations_due ON invocations (status, next_at);
"""

TERMINAL = ("succeeded", "failed", "expired")


class QueueDB:
    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def recover(self, now: float) -> int:
        """Calls that were running when the controller died go back to the queue."""
        with self.db:
            cur = self.db.execute("UPDATE invocations SET status='queued', next_at=?, updated_at=? "
                                  "WHERE status='running'", (now, now))
        return cur.rowcount

    def enqueue(self, function: str, qualifier: str, payload: bytes, idempotency_key: str | None,
                now: float) -> tuple[str, bool]:
        """Store a call; returns (id, created). A repeated idempotency key returns the first id."""
        inv_id = str(uuid.uuid4())
        try:
            with self.db:
                self.db.execute(
                    "INSERT INTO invocations (id, function, qualifier, payload, idempotency_key,"
                    " status, created_at, updated_at, next_at) VALUES (?,?,?,?,?,'queued',?,?,?)",
                    (inv_id, function, qualifier, payload, idempotency_key, now, now, now))
        except sqlite3.IntegrityError:
            row = self.db.execute("SELECT id FROM invocations WHERE function=? AND "
                                  "idempotency_key=?", (function, idempotency_key)).fetchone()
            if row is None:
                raise
            return str(row["id"]), False
        return inv_id, True

    def claim(self, now: float, max_age_s: float) -> dict[str, Any] | None:
        """Mark the oldest due call ``running`` (one more attempt) and return it; expire the
        ones too old to start."""
        with self.db:
            self.db.execute("UPDATE invocations SET status='expired', updated_at=?, error=? "
                            "WHERE status='queued' AND created_at < ?",
                            (now, '{"errorType": "Expired", "errorMessage": "event too old"}',
                             now - max_age_s))
            row = self.db.execute("SELECT * FROM invocations WHERE status='queued' AND next_at<=? "
                                  "ORDER BY next_at, created_at LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            self.db.execute("UPDATE invocations SET status='running', attempts=attempts+1, "
                            "updated_at=? WHERE id=?", (now, row["id"]))
        out = dict(row)
        out["attempts"] += 1
        return out

    def finish(self, inv_id: str, status: str, result: bytes | None, error: str | None,
               now: float) -> None:
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal state")
        with self.db:
            self.db.execute("UPDATE invocations SET status=?, result=?, error=?, updated_at=? "
                            "WHERE id=?", (status, result, error, now, inv_id))

    def retry(self, inv_id: str, next_at: float, error: str, now: float) -> None:
        with self.db:
            self.db.execute("UPDATE invocations SET status='queued', error=?, next_at=?, "
                            "updated_at=? WHERE id=?", (error, next_at, now, inv_id))

    def get(self, inv_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM invocations WHERE id=?", (inv_id,)).fetchone()
        return None if row is None else dict(row)

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT MIN(next_at) FROM invocations WHERE status='queued'")
        value = row.fetchone()[0]
        return None if value is None else float(value)

    def depth(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) FROM invocations "
                               "WHERE status IN ('queued','running') GROUP BY status")
        out = {"queued": 0, "running": 0}
        out.update({str(status): int(n) for status, n in rows})
        return out
