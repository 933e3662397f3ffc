"""uvicorn's server plus the two things docs/protocol.md promises that uvicorn does not do by itself.

1. Shutdown (SIGTERM, Ctrl-C): uvicorn closes every WebSocket with 1012 and no goodbye, and only then runs the
   lifespan's shutdown. Here the listening sockets close first, every session gets `goodbye server_shutdown` and close
   1001 and a moment to read it, and then uvicorn's own shutdown runs, bounded by `timeout_graceful_shutdown`: the
   process exits within a few seconds from any state (sessions mid-inference, queued, in the handshake, slow readers).
2. A connection whose client stopped reading never finishes closing: asyncio's `transport.close()` waits to flush
   the buffer to a peer that reads nothing. Such transports are aborted `REAP_AFTER_S` after they began closing, so a
   client cannot pin buffers (and uvicorn's connection set) by not reading.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from server.state import AppState

log = logging.getLogger("sdxs.server")

DRAIN_S = 1.0  # on shutdown: time for the sessions' goodbyes and close frames to be written and answered
GRACEFUL_S = 1.0  # then uvicorn's wait for the other connections (Gradio streams, HTTP requests in progress)
REAP_AFTER_S = 10.0  # a transport still unflushed this long after it began closing belongs to a client that left


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState):
        super().__init__(config)
        self.state = state
        self._closing_since: dict[object, float] = {}  # uvicorn protocol -> when its transport began closing

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in getattr(self, "servers", ()):  # no new connections while the sessions say goodbye
            server.close()
        deadline = time.monotonic() + DRAIN_S
        await self.state.close_connections(DRAIN_S)
        while self._closing_websockets() and time.monotonic() < deadline:  # let clients answer the close frame:
            await asyncio.sleep(0.02)  # closing the socket under an unanswered close can reset it (data lost)
        self._reap(after_s=0.0)  # what still cannot flush now is a client that does not read
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:  # main_loop ticks every 0.1 s
            self._reap(after_s=REAP_AFTER_S)
        return await super().on_tick(counter)

    def _closing_websockets(self) -> list:
        return [c for c in self.server_state.connections if getattr(c, "close_sent", False)]

    def _reap(self, after_s: float) -> None:
        """Abort transports that began closing at least `after_s` ago and still hold unsent data."""
        now, seen = time.monotonic(), dict[object, float]()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is None or not transport.is_closing() or not transport.get_write_buffer_size():
                continue
            seen[connection] = since = self._closing_since.get(connection, now)
            if now - since >= after_s:
                log.info("dropping a connection whose client reads nothing (%d bytes unsent)",
                         transport.get_write_buffer_size())
                transport.abort()
        self._closing_since = seen
