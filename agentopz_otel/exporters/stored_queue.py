"""The OTLP exporter's persistent sending queue: one row per accepted request, in the storage
extension's SQLite database.

Writes happen on a thread of their own, so the event loop never waits for the disk: `append` and
`remove` only record the change, the thread commits everything recorded since its last commit in one
transaction (group commit), and `flushed()` lets the receiver wait until what it handed over is
committed before it acknowledges the request. With the write-ahead log and synchronous=NORMAL a commit
survives a killed process. Rows are read back in arrival order at start and deleted once delivered or
given up on; a crash between delivery and delete means a resend: delivery is at least once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Sequence

log = logging.getLogger("agentopz_otel.exporter.otlp")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sending_queue (
    seq INTEGER PRIMARY KEY,
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
        (last,) = connection.execute("SELECT coalesce(max(seq), 0) FROM sending_queue").fetchone()
        self._next_seq = last + 1
        self._inserts: list[tuple[int, str, str, int, bytes]] = []
        self._deletes: list[tuple[int]] = []
        self._recorded = 0  # changes recorded so far
        self._committed = 0  # changes committed so far
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._error: sqlite3.Error | None = None  # of the latest commit
        self._closing = False
        self._changed = threading.Condition()
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write, name=f"sending-queue {exporter} {signal}", daemon=True)
        self._writer.start()

    def load(self) -> list[tuple[bytes, int, int]]:
        """Every stored (body, items, seq), oldest first."""
        rows = self._connection.execute(
            "SELECT body, items, seq FROM sending_queue WHERE exporter = ? AND signal = ? ORDER BY seq", self._owner
        )
        return [(bytes(body), items, seq) for body, items, seq in rows]

    def append(self, body: bytes, items: int) -> int:
        """Record a new request; its row number (arrival order) is returned at once."""
        seq = self._next_seq
        self._next_seq += 1
        with self._changed:
            self._inserts.append((seq, *self._owner, items, body))
            self._recorded += 1
            self._changed.notify()
        return seq

    def remove(self, seqs: Sequence[int]) -> None:
        with self._changed:
            self._deletes.extend((seq,) for seq in seqs)
            self._recorded += 1
            self._changed.notify()

    async def flushed(self) -> bool:
        """Wait until every change recorded so far is committed; False if that commit failed."""
        with self._changed:
            if self._committed >= self._recorded:
                return self._error is None
            waiter = self._loop.create_future()
            self._waiters.append((self._recorded, waiter))
        return await waiter

    def _write(self) -> None:
        while True:
            with self._changed:
                while self._committed == self._recorded and not self._closing:
                    self._changed.wait()
                if self._committed == self._recorded:
                    return
                inserts, self._inserts = self._inserts, []
                deletes, self._deletes = self._deletes, []
                upto = self._recorded
            error = None
            try:
                with self._connection:
                    self._connection.execute("BEGIN")
                    self._connection.executemany(
                        "INSERT INTO sending_queue (seq, exporter, signal, items, body) VALUES (?, ?, ?, ?, ?)", inserts
                    )
                    self._connection.executemany("DELETE FROM sending_queue WHERE seq = ?", deletes)
            except sqlite3.Error as failure:
                error = failure
                log.error("%s: the persistent queue cannot write: %s", " ".join(self._owner), failure)
            with self._changed:
                self._committed = upto
                self._error = error
                done = [waiter for target, waiter in self._waiters if target <= upto]
                self._waiters = [(target, waiter) for target, waiter in self._waiters if target > upto]
            for waiter in done:
                self._loop.call_soon_threadsafe(_settle, waiter, error is None)

    async def close(self) -> None:
        """Commit what is recorded and stop the writer."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        await asyncio.to_thread(self._writer.join)


def _settle(waiter: asyncio.Future, committed: bool) -> None:
    if not waiter.done():
        waiter.set_result(committed)
