"""The open connections of one server, by phase, and the limits the connection guard (connections.py) holds them
to: which connection to close when a new one needs room, and the log line that sums up the cuts."""

from __future__ import annotations

import logging
import time
from collections import Counter
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.http.connections import ConnectionGuard

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0  # cut connections are summed up in the log at most this often (a flood is one line)


class Phase(Enum):
    HEADERS = "waiting for request headers"
    BUSY = "request in progress"
    IDLE = "idle keep-alive"


class ConnectionTable:
    """One server's open connections by phase; those that may be closed to make room, oldest first."""

    def __init__(self) -> None:
        self.phases: dict[ConnectionGuard, Phase] = {}
        self._waiting: dict[ConnectionGuard, float] = {}  # insertion order: longest waiting first
        self._idle: dict[ConnectionGuard, float] = {}
        self._cuts: Counter[str] = Counter()
        self._logged_at = -LOG_EVERY_S

    def __len__(self) -> int:
        return len(self.phases)

    def set(self, conn: ConnectionGuard, phase: Phase) -> None:
        if self.phases.get(conn) is phase:
            return  # keeps its place in the queue
        self.forget(conn)
        self.phases[conn] = phase
        if phase is Phase.HEADERS:
            self._waiting[conn] = time.monotonic()
        elif phase is Phase.IDLE:
            self._idle[conn] = time.monotonic()

    def forget(self, conn: ConnectionGuard) -> None:
        self.phases.pop(conn, None)
        self._waiting.pop(conn, None)
        self._idle.pop(conn, None)

    def victim(self) -> tuple[ConnectionGuard, float] | None:
        """The connection to close for a new one, and since when it has waited: the longest waiting for its
        headers that has had a chance to send them, else the longest idle; None when there is none."""
        for conn, since in self._waiting.items():  # oldest first
            if conn.settled:
                return conn, since
        for conn, since in self._idle.items():
            return conn, since
        return None

    def note(self, cut: str) -> None:
        self._cuts[cut] += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning(
                "connections cut (%d open): %s",
                len(self),
                ", ".join(f"{n} {what}" for what, n in self._cuts.most_common()),
            )
            self._cuts.clear()
            self._logged_at = now
