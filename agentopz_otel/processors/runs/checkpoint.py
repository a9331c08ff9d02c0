"""Open runs across a restart: the runs processor's state saved in a storage extension's database.

The open traces (with their held root spans) and the recently finished ones are pickled into one row
per processor, at shutdown and every `interval_seconds`, and read back at start, so a restart does
not finish in-flight runs early or turn them into `abandoned`. Pickle is the standard library's
serializer for this object graph (groups point at their trace and at each other); the file is the
service's own state, as trusted as its config. Times on the monotonic clock are stored as ages and
rebased on load, so the downtime does not count as quiet time: a run needs its grace period again
after a restart, which gives senders time to deliver what they retried.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from .assembly import TraceState

log = logging.getLogger("agentopz_otel.runs")

FORMAT_VERSION = 1
_SCHEMA = "CREATE TABLE IF NOT EXISTS run_checkpoint (owner TEXT PRIMARY KEY, saved_at REAL NOT NULL, state BLOB)"


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage: str = Field(description="id of a storage extension")
    interval_seconds: float = Field(default=30.0, gt=0, description="a crash loses at most this much run assembly")


@dataclass
class RunState:
    """What a checkpoint holds: open traces by last activity, and finished ones with when they finished."""

    traces: OrderedDict[bytes, TraceState]
    finished: OrderedDict[bytes, tuple[TraceState, float]]


def _rebase(state: RunState, shift: float) -> None:
    """Move every monotonic time in `state` by `shift` seconds."""
    traces = [*state.traces.values(), *(trace for trace, _ in state.finished.values())]
    for trace in traces:
        trace.last_seen += shift
        for group in trace.groups:
            group.last_seen += shift
            group.root_arrived += shift
    for trace_id, (trace, finished_at) in state.finished.items():
        state.finished[trace_id] = (trace, finished_at + shift)


class RunCheckpoint:
    def __init__(self, connection: sqlite3.Connection, owner: str) -> None:
        self._connection = connection
        self._owner = owner
        connection.execute(_SCHEMA)

    def load(self) -> RunState | None:
        """The saved state, rebased to this process's clock; None when there is none or it is unreadable."""
        row = self._connection.execute("SELECT state FROM run_checkpoint WHERE owner = ?", (self._owner,)).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            version, saved_monotonic, state = pickle.loads(row[0])
        except Exception as error:  # a checkpoint from another version of the code, or damaged
            log.warning("%s: the run checkpoint cannot be read (%s); starting without it", self._owner, error)
            return None
        if version != FORMAT_VERSION:
            log.warning(
                "%s: the run checkpoint has format %s, not %s; starting without it",
                self._owner,
                version,
                FORMAT_VERSION,
            )
            return None
        _rebase(state, time.monotonic() - saved_monotonic)
        return state

    def snapshot(self, state: RunState) -> bytes:
        """Serialize on the event loop, where the state is consistent."""
        return pickle.dumps((FORMAT_VERSION, time.monotonic(), state), protocol=pickle.HIGHEST_PROTOCOL)

    def _write(self, blob: bytes) -> None:
        self._connection.execute(
            "INSERT INTO run_checkpoint (owner, saved_at, state) VALUES (?, ?, ?) "
            "ON CONFLICT (owner) DO UPDATE SET saved_at = excluded.saved_at, state = excluded.state",
            (self._owner, time.time(), blob),
        )

    async def save(self, state: RunState) -> None:
        """Snapshot now; write on a worker thread, so the event loop does not wait for the disk."""
        try:
            blob = self.snapshot(state)
            await asyncio.to_thread(self._write, blob)
        except (sqlite3.Error, RecursionError, pickle.PicklingError) as error:
            log.warning("%s: saving the run checkpoint failed: %s", self._owner, error)
