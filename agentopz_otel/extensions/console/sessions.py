"""Console sign-in sessions: in memory, and in the `storage` extension's SQLite database when the
console has one, so a restart does not sign everyone out.

A session is known by the SHA-256 of its cookie value, in memory and on disk: whoever reads the
database file learns names, expiry times and CSRF tokens, but no cookie that would let them act.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_sessions (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL, expires REAL NOT NULL);
"""


@dataclass(frozen=True)
class Session:
    key: str  # SHA-256 of the cookie value, hex
    name: str
    csrf: str
    expires: float


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode(errors="surrogateescape")).hexdigest()


class Sessions:
    """At most `max_sessions` sessions (the oldest signed out first); `now` is passed in."""

    def __init__(self, max_sessions: int, connection: sqlite3.Connection | None = None) -> None:
        self.max_sessions = max_sessions
        self._db = connection
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def load(self, now: float) -> None:
        """Create the table and take in the sessions that have not expired, oldest first."""
        if self._db is None:
            return
        self._db.executescript(_SCHEMA)
        self._db.execute("DELETE FROM console_sessions WHERE expires < ?", (now,))
        rows = self._db.execute(
            "SELECT key, name, csrf, expires FROM console_sessions ORDER BY expires DESC LIMIT ?", (self.max_sessions,)
        ).fetchall()
        for row in reversed(rows):
            self._sessions[row[0]] = Session(*row)

    def get(self, cookie: str, now: float) -> Session | None:
        if not cookie:
            return None
        session = self._sessions.get(_key(cookie))
        if session is not None and session.expires < now:
            self.drop(session)
            return None
        return session

    def new(self, name: str, lifetime: float, now: float) -> tuple[str, Session]:
        """A new session: (its cookie value, the session)."""
        while len(self._sessions) >= self.max_sessions:
            self.drop(next(iter(self._sessions.values())))
        cookie = secrets.token_urlsafe(32)
        session = Session(_key(cookie), name, secrets.token_urlsafe(32), now + lifetime)
        self._sessions[session.key] = session
        if self._db is not None:
            self._db.execute(
                "INSERT INTO console_sessions (key, name, csrf, expires) VALUES (?, ?, ?, ?)",
                (session.key, session.name, session.csrf, session.expires),
            )
        return cookie, session

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.key, None)
        if self._db is not None:
            self._db.execute("DELETE FROM console_sessions WHERE key = ?", (session.key,))
