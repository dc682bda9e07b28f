"""The bridge's HTTP connections: uvicorn's h11 protocol with the limits an
edge server needs and uvicorn lacks.

uvicorn closes a keep-alive connection after `timeout_keep_alive` seconds
of silence between requests, and answers 503 to a request when
`limit_concurrency` connections are open. It has no deadline for a request's
head, so a connection that sends nothing, or a head a byte at a time
(slowloris), stays open for ever; it lets a WebSocket upgrade past the cap;
and it accepts connections until the process runs out of file descriptors.
So, as a protocol class given to uvicorn (`http=`):

- the request head must arrive within `header_timeout` seconds, counted from
  the connection's opening for its first request and from the first byte for
  the next ones (Go's ReadHeaderTimeout, hyper's header_read_timeout, Envoy's
  request_headers_timeout); then the connection is closed;
- a WebSocket upgrade past the cap gets the 503 any request gets;
- at most `max_open` connections are held, so the process never reaches its
  open-file limit: past it the oldest connection that owes nothing (it has
  sent no byte yet, or waits idle between requests) is closed to make room,
  as nginx reuses such connections when it runs out; when every one is busy,
  the new connection is closed at once.

uvicorn has no public hook for any of these, so this subclass leans on its
H11Protocol's own members (`_should_upgrade`, `connections`, `tasks`,
`conn`): the one place the node reaches inside a library. uvicorn is pinned
(pyproject.toml), and tests/test_bridge_connections.py fails when they move.
"""

import asyncio
import contextlib
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class EdgeH11Protocol(H11Protocol):
    header_timeout: float = 10.0  # seconds for a request's head
    max_open: int = 2000  # connections held at once
    # Connections that owe nothing, oldest first: one of each server's own
    # class (`with_limits`), shared by its connections.
    idle: dict["EdgeH11Protocol", None] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._turned_away = False

    @classmethod
    def with_limits(cls, *, header_timeout: float, max_open: int) -> type["EdgeH11Protocol"]:
        return type(cls.__name__, (cls,), {"header_timeout": header_timeout, "max_open": max_open, "idle": {}})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_open and not self._close_oldest_idle():
            self._turned_away = True
            transport.close()
            log.warning("connection closed unheard: %d are open and busy, the most this bridge holds",
                        len(self.connections))
            return
        super().connection_made(transport)
        self.idle[self] = None
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._turned_away:
            return
        self.idle.pop(self, None)
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._turned_away:
            return
        self.idle.pop(self, None)
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        owes_nothing = self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]
        if owes_nothing and not self.transport.is_closing():
            self.idle[self] = None  # kept alive until timeout_keep_alive, or until its room is needed

    def _close_oldest_idle(self) -> bool:
        while self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            if not oldest.transport.is_closing():
                oldest._close()
                return True
        return False

    def _close(self) -> None:
        self._stop_head_timer()
        with contextlib.suppress(h11.LocalProtocolError):  # h11 only notes it; the socket closes anyway
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def _should_upgrade(self) -> bool:
        # uvicorn upgrades before it counts connections; past the cap, an
        # upgrade is left to the count, which answers 503.
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return False
        return super()._should_upgrade()

    def _watch_head(self) -> None:
        """A deadline runs while the client owes us a request head, and only then."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        elif not waiting:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._close()
