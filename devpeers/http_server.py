"""A uvicorn server in a background thread: the one the test peers share.

    server = ThreadedServer(app, port=0, name="fake-thing")
    server.start()          # binds, serves, returns once uvicorn is up
    server.base_url         # "http://127.0.0.1:<port>"
    server.stop()           # idempotent; releases requests parked in hang()

Inside a handler, `await server.hang(lambda: still_hanging)` parks a request
until the server stops or the condition turns false.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

HANG_POLL = 0.02  # seconds between checks of a hanging request


class ThreadedServer:
    """Serve an ASGI app with uvicorn in a daemon thread.

    `port=0` picks a free port on the first start; a restart after stop()
    binds the same port again, so URLs handed out stay valid. stop() answers
    nothing new, waits at most ~1 s for responses in flight, and may be
    called any number of times.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, name: str | None = None) -> None:
        self._app = app
        self.host = host
        self._port = port  # as asked for; 0: any free port
        self.port: int | None = None  # as bound, once started
        self.name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # set from stop() until the next start()

    @property
    def base_url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _bind(self) -> socket.socket:
        # proto=IPPROTO_TCP, or asyncio skips TCP_NODELAY (it checks sock.proto) and
        # every answer on a reused connection waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port if self.port is not None else self._port))
            sock.listen(128)  # queue early connections instead of refusing them
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._thread is not None:
                return
            sock = self._bind()
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                self._app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=1,
                timeout_keep_alive=5,
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [sock]},
                daemon=True,
                name=self.name or f"uvicorn-{self.port}",
            )
            self.stopping.clear()
            thread.start()
            deadline = time.monotonic() + timeout
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    server.should_exit = server.force_exit = True
                    thread.join(5)
                    sock.close()
                    raise RuntimeError(f"test server {thread.name} did not start")
                time.sleep(0.005)
            self._server, self._thread = server, thread

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self.stopping.set()  # releases requests parked in hang()
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():  # graceful shutdown stuck: stop waiting for connections
                server.force_exit = True
                thread.join(1)
            self._server = self._thread = None

    async def hang(self, still: Callable[[], bool] = lambda: True) -> None:
        """Sleep until the server stops or `still()` turns false."""
        while not self.stopping.is_set() and still():
            await asyncio.sleep(HANG_POLL)


class Peer:
    """What every test peer shares: its `ThreadedServer` in `self._http`,
    started and stopped with the peer, and `with` support."""

    _http: ThreadedServer

    def start(self):
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()  # idempotent; releases hanging requests

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return self._http.base_url
