"""The OTLP exporter's persistent sending queue: one row per accepted request, in the storage
extension's SQLite database.

A request is committed before the receiver acknowledges it (one INSERT in autocommit mode: with the
write-ahead log and synchronous=NORMAL that is a write to the log, no fsync, and it survives a killed
process), and deleted once it is delivered or given up on. Rows are read back in arrival order at
start. A crash between delivery and delete means a resend: delivery is at least once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sending_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    exporter TEXT NOT NULL,
    signal TEXT NOT NULL,
    items INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sending_queue_by_owner ON sending_queue (exporter, signal, seq);
"""


class StoredQueue:
    """The stored requests of one exporter and one signal."""

    def __init__(self, connection: sqlite3.Connection, exporter: str, signal: str) -> None:
        self._connection = connection
        self._owner = (exporter, signal)
        connection.executescript(_SCHEMA)

    def load(self) -> list[tuple[bytes, int, int]]:
        """Every stored (body, items, seq), oldest first."""
        rows = self._connection.execute(
            "SELECT body, items, seq FROM sending_queue WHERE exporter = ? AND signal = ? ORDER BY seq", self._owner
        )
        return [(bytes(body), items, seq) for body, items, seq in rows]

    def append(self, body: bytes, items: int) -> int:
        cursor = self._connection.execute(
            "INSERT INTO sending_queue (exporter, signal, items, body) VALUES (?, ?, ?, ?)", (*self._owner, items, body)
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def remove(self, seqs: Sequence[int]) -> None:
        """Delete the rows of a finished batch, in one transaction."""
        with self._connection:
            self._connection.execute("BEGIN")
            self._connection.executemany("DELETE FROM sending_queue WHERE seq = ?", [(seq,) for seq in seqs])
