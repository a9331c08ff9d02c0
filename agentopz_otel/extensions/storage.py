"""The `storage` extension: one embedded SQLite database that other components ask for by id.

As the Collector's `file_storage`, it holds what must outlive a restart: the exporter's persistent
sending queue, the runs processor's checkpoint of open runs, rollout state and its audit log. SQLite
from the standard library is a well-kept, crash-safe store (write-ahead log, atomic commits) that
needs no server; each client gets its own connection and keeps its own tables.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..components import Context, Factory

log = logging.getLogger("agentopz_otel.storage")


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The database file; a relative path is relative to the working directory. Created on start.
    path: str = Field(default="agentopz-data/agentopz.sqlite", min_length=1)
    # Seconds a writer waits for another connection's write lock before failing.
    busy_timeout_seconds: float = Field(default=5.0, gt=0)


class StorageExtension:
    def __init__(self, component_id: str, config: StorageConfig) -> None:
        self.id = component_id
        self.config = config
        self.path = Path(config.path)
        self._connections: list[sqlite3.Connection] = []

    def connect(self, client: str) -> sqlite3.Connection:
        """A new connection for `client` (a component id, for error messages); closed at shutdown.

        Connections may be used from a worker thread (`check_same_thread=False`), one at a time.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=self.config.busy_timeout_seconds, check_same_thread=False, isolation_level=None
            )
            connection.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL loses no committed transaction on a process crash (only on power loss).
            connection.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as error:
            raise OSError(f"storage {self.id}: cannot open {self.path} for {client}: {error}") from None
        self._connections.append(connection)
        return connection

    async def start(self) -> None:
        self.connect(self.id).close()

    async def shutdown(self, timeout: float) -> None:
        for connection in self._connections:
            try:
                connection.close()
            except sqlite3.Error as error:
                log.warning("storage %s: closing a connection failed: %s", self.id, error)
        self._connections.clear()


def _create(component_id: str, config: StorageConfig, context: Context) -> StorageExtension:
    return StorageExtension(component_id, config)


FACTORY = Factory(type="storage", kind="extension", config_type=StorageConfig, create=_create)
