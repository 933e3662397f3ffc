"""Who gets served: at most `max_sessions` active sessions, `max_queue` waiting, `max_per_client` per address.

Runs on the event loop only (no locks). Members are connections with `activate()` and `set_queue_position()`.
"""

from __future__ import annotations

import collections
from typing import Protocol

from server.metrics import Metrics
from server.protocol import ErrorCode, ProtocolError, SessionState


class Member(Protocol):
    client: str

    def activate(self) -> None: ...

    def set_queue_position(self, position: int, queue_length: int) -> None: ...


class Admission:
    def __init__(self, max_sessions: int, max_queue: int, max_per_client: int, metrics: Metrics):
        self.max_sessions, self.max_queue, self.max_per_client = max_sessions, max_queue, max_per_client
        self.metrics = metrics
        self.connected: set[Member] = set()
        self.active: list[Member] = []
        self.queued: list[Member] = []
        self._per_client: collections.Counter[str] = collections.Counter()

    def connect(self, member: Member) -> None:
        """A socket was accepted; raises TOO_MANY_SESSIONS when this address has too many already."""
        if self._per_client[member.client] >= self.max_per_client:
            raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"this address already has {self.max_per_client} "
                                "sessions open; close one and try again")
        self._per_client[member.client] += 1
        self.connected.add(member)

    def join(self, member: Member) -> SessionState:
        """After `hello`: ACTIVE if a slot is free, else QUEUED; raises SERVER_FULL when the queue is full too."""
        if len(self.active) < self.max_sessions and not self.queued:
            self.active.append(member)
            self._update_gauges()
            return SessionState.ACTIVE
        if len(self.queued) >= self.max_queue:
            raise ProtocolError(ErrorCode.SERVER_FULL, f"server full: {len(self.active)} sessions active and "
                                f"{len(self.queued)} waiting; try again later")
        self.queued.append(member)
        self._update_gauges()
        return SessionState.QUEUED

    def leave(self, member: Member) -> None:
        """A session ended (any state): free its slot, promote the first waiting session, renumber the queue.
        Idempotent: a second call for the same member does nothing."""
        if member not in self.connected and member not in self.active and member not in self.queued:
            return
        if member in self.connected:
            self.connected.discard(member)
            self._per_client[member.client] -= 1
            if self._per_client[member.client] <= 0:
                del self._per_client[member.client]
        if member in self.active:
            self.active.remove(member)
        elif member in self.queued:
            self.queued.remove(member)
        while self.queued and len(self.active) < self.max_sessions:
            nxt = self.queued.pop(0)
            self.active.append(nxt)
            nxt.activate()
        self.announce_positions()
        self._update_gauges()

    def announce_positions(self) -> None:
        for i, member in enumerate(self.queued):
            member.set_queue_position(i + 1, len(self.queued))

    def _update_gauges(self) -> None:
        self.metrics.sessions.labels("active").set(len(self.active))
        self.metrics.sessions.labels("queued").set(len(self.queued))
