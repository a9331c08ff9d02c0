"""Rollout state and its audit log in the `storage` extension's SQLite database.

Every change is one transaction: the new agent or rollout row and its audit entry are written
together, so a crash never leaves a change without its audit entry or the reverse.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from typing import Any

from .model import AgentFlag, AuditEntry, ComponentFlag, Rollout

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_agents (agent TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, agent TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rollout_rollouts_agent ON rollout_rollouts (agent, id);
CREATE TABLE IF NOT EXISTS rollout_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, agent TEXT NOT NULL, action TEXT NOT NULL,
    actor TEXT NOT NULL, actor_kind TEXT NOT NULL, reason TEXT NOT NULL,
    evidence TEXT, before TEXT, after TEXT);
CREATE INDEX IF NOT EXISTS rollout_audit_agent ON rollout_audit (agent, id);
CREATE TABLE IF NOT EXISTS rollout_components (key TEXT PRIMARY KEY, agent TEXT NOT NULL, body TEXT NOT NULL);
"""


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class RolloutStore:
    def __init__(self, connection: sqlite3.Connection, max_audit_entries: int, max_rollouts_per_agent: int) -> None:
        self._db = connection
        self._max_audit_entries = max_audit_entries
        self._max_rollouts_per_agent = max_rollouts_per_agent

    def create_schema(self) -> None:
        self._db.executescript(_SCHEMA)

    def load(self) -> tuple[dict[str, AgentFlag], dict[str, Rollout]]:
        """Every agent, and each agent's latest rollout."""
        agents = {}
        for agent, body in self._db.execute("SELECT agent, body FROM rollout_agents"):
            agents[agent] = AgentFlag(**json.loads(body))
        rollouts = {}
        query = (
            "SELECT id, body FROM rollout_rollouts WHERE id IN (SELECT MAX(id) FROM rollout_rollouts GROUP BY agent)"
        )
        for rollout_id, body in self._db.execute(query):
            rollout = Rollout.from_dict({**json.loads(body), "id": rollout_id})
            rollouts[rollout.agent] = rollout
        return agents, rollouts

    def load_components(self) -> dict[str, ComponentFlag]:
        """Every component flag by key."""
        components = {}
        for key, body in self._db.execute("SELECT key, body FROM rollout_components"):
            components[key] = ComponentFlag(**json.loads(body))
        return components

    def next_rollout_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rollout_rollouts'").fetchone()
        return (row[0] if row else 0) + 1

    def commit(
        self,
        entry: AuditEntry,
        *,
        agent: AgentFlag | None = None,
        rollout: Rollout | None = None,
        component: ComponentFlag | None = None,
        removed_component: str | None = None,
    ) -> int:
        """Write the changed agent, rollout or component flag (or remove one, by key) with its audit
        entry, atomically; the entry's id."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if agent is not None:
                db.execute(
                    "INSERT INTO rollout_agents (agent, body) VALUES (?, ?) "
                    "ON CONFLICT (agent) DO UPDATE SET body = excluded.body",
                    (agent.agent, _dump(asdict(agent))),
                )
            if rollout is not None:
                body = rollout.to_dict()
                del body["id"]
                db.execute(
                    "INSERT INTO rollout_rollouts (id, agent, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                    (rollout.id, rollout.agent, _dump(body)),
                )
                db.execute(
                    "DELETE FROM rollout_rollouts WHERE agent = ? AND id <= ("
                    "SELECT id FROM rollout_rollouts WHERE agent = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (rollout.agent, rollout.agent, self._max_rollouts_per_agent),
                )
            if component is not None:
                db.execute(
                    "INSERT INTO rollout_components (key, agent, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET body = excluded.body",
                    (component.key, component.agent, _dump(asdict(component))),
                )
            if removed_component is not None:
                db.execute("DELETE FROM rollout_components WHERE key = ?", (removed_component,))
            cursor = db.execute(
                "INSERT INTO rollout_audit (at, agent, action, actor, actor_kind, reason, evidence, before, after) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.at,
                    entry.agent,
                    entry.action,
                    entry.actor,
                    entry.actor_kind,
                    entry.reason,
                    _dump(entry.evidence),
                    _dump(entry.before),
                    _dump(entry.after),
                ),
            )
            entry_id = cursor.lastrowid
            assert entry_id is not None
            db.execute("DELETE FROM rollout_audit WHERE id <= ?", (entry_id - self._max_audit_entries,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return entry_id

    def history(self, agent: str | None, limit: int) -> list[AuditEntry]:
        columns = "id, at, agent, action, actor, actor_kind, reason, evidence, before, after"
        if agent is None:
            rows = self._db.execute(f"SELECT {columns} FROM rollout_audit ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute(
                f"SELECT {columns} FROM rollout_audit WHERE agent = ? ORDER BY id DESC LIMIT ?", (agent, limit)
            )
        return [AuditEntry(*row[:7], evidence=_load(row[7]), before=_load(row[8]), after=_load(row[9])) for row in rows]
