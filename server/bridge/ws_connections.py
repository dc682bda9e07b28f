"""The bridge's WebSocket connections: uvicorn's websockets (sans-I/O)
protocol, made to say why it closes on a message over its size limit.

websockets refuses such a message from its frame header, before reading the
payload, so memory stays bounded whatever the client sends; uvicorn then
sends the close (1009) and drops the connection without a word to the app or
the client, and a browser hides close reasons. So, as a protocol class given
to uvicorn (`ws=`):

- the client gets the error text the app sends before any close,
  `{"error": "message of N bytes is over the limit of M bytes", "done": true}`,
  then the close frame;
- what the client sends after it (the rest of the message, its close) is
  read and thrown away, and the connection is closed once the client has
  been quiet for LINGER_QUIET, or after uvicorn's `close_timeout` (10 s) in
  any case: closed at once, with the client's bytes unread, the kernel resets
  it, and a reset can reach the client before it has read the error (nginx's
  lingering close). Not half-closed meanwhile: a Python 3.11 asyncio client
  told EOF while it still has a message to send fails as it closes.
"""

import asyncio
import logging

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode

from server.bridge.websocket import error_message

log = logging.getLogger(__name__)

LINGER_QUIET = 0.5  # seconds without a byte from a refused client before its connection is closed


def too_big(exc: PayloadTooBig) -> str:
    size = (exc.size or 0) + (exc.current_size or 0)  # the frame, and the fragments before it
    return f"message of {size} bytes is over the limit of {exc.max_size} bytes"


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    lingering = False
    _quiet: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # after the message we refused: not kept
            self._wait_for_quiet()
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._quiet is not None:
            self._quiet.cancel()
        super().connection_lost(exc)

    def _wait_for_quiet(self) -> None:
        if self._quiet is not None:
            self._quiet.cancel()
        self._quiet = self.loop.call_later(LINGER_QUIET, self.transport.close)

    def handle_parser_exception(self) -> None:
        exc = self.conn.parser_exc
        if not isinstance(exc, PayloadTooBig) or not self.handshake_complete or self.close_sent:
            super().handle_parser_exception()
            return
        message = too_big(exc)
        log.info("WebSocket closed: %s", message)
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1009, "reason": message})
        said = Frame(Opcode.TEXT, error_message(message).encode()).serialize(mask=False, extensions=self.conn.extensions)
        self.transport.write(said + b"".join(self.conn.data_to_send()))  # the close websockets queued
        self.close_sent = True
        self.disconnected = True  # the app's next send is told the client has gone
        self.lingering = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._wait_for_quiet()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
