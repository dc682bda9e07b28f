"""`python -m server.bridge.main`: the HTTP/WebSocket bridge, alone or beside
the gRPC server (`server.node` starts it). GRPC_TARGET points it at a remote
node; by default it uses localhost:GRPC_PORT."""

import logging
import resource
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from server import logs
from server.bridge.connections import EdgeH11Protocol
from server.bridge.ws_connections import EdgeWebSocketProtocol
from server.config import Settings, load

log = logging.getLogger("server.bridge.main")  # also when run as __main__

WS_OVERHEAD = 64 * 1024  # bytes a WebSocket message may carry beside a frame (ws_max_size)
KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection is kept between requests (uvicorn's default)
MAX_HEAD_BYTES = 16 * 1024  # a request's line and headers (h11's default; nginx allows 4 x 8 KB, Envoy 60 KB)
BACKLOG = 2048  # connections the kernel queues for accept (uvicorn's default)
FD_RESERVE = 64  # descriptors kept for what the bridge opens itself: its gRPC channel, logs, the event loop


@dataclass(frozen=True)
class ConnectionLimits:
    served: int  # connections served at once; a request past them is answered 503 (uvicorn's limit_concurrency)
    held: int  # connections held at all; past them a new one is closed unheard
    backlog: int


def connection_limits(settings: Settings, open_files: int | None = None) -> ConnectionLimits:
    """HTTP_MAX_CONNECTIONS served, as many again held just long enough to be
    told 503, all below the open-file limit. asyncio accepts up to `backlog`
    connections a loop turn and a protocol counts its connection two turns
    later, so three backlogs of descriptors are kept free besides."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    backlog = min(BACKLOG, max(open_files // 16, 16))
    room = max(open_files - FD_RESERVE - 3 * backlog, 2)
    served = settings.http_max_connections
    if 2 * served > room:
        served = max(room // 2, 1)
        log.warning(
            "HTTP_MAX_CONNECTIONS %d is more than %d open files allow; serving %d connections at once",
            settings.http_max_connections, open_files, served,
        )
    return ConnectionLimits(served=served, held=2 * served, backlog=backlog)


def raise_open_file_limit() -> int:
    """The soft limit on open files raised to the hard one, as servers do
    (nginx's worker_rlimit_nofile, Go since 1.19); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
        except (ValueError, OSError):
            pass
    return soft


def uvicorn_options(settings: Settings) -> dict:
    tls = dict(ssl_certfile=settings.tls_cert_file, ssl_keyfile=settings.tls_key_file) if settings.tls else {}
    limits = connection_limits(settings)
    return dict(
        **tls,
        http=EdgeH11Protocol.with_limits(header_timeout=settings.http_header_timeout, max_open=limits.held),
        timeout_keep_alive=KEEP_ALIVE,
        limit_concurrency=limits.served + 1,  # uvicorn counts the connection asking among those open
        backlog=limits.backlog,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        ws=EdgeWebSocketProtocol,  # uvicorn's websockets-sansio, saying why it closes a message over ws_max_size
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=2 * settings.ws_ping_interval,  # no pong for this long: the client is gone
        ws_max_size=settings.realtime_max_frame_bytes + WS_OVERHEAD,
        # Frames are JPEG and answers a few words: deflate would only spend CPU on both ends.
        ws_per_message_deflate=False,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Keep server/logs.py's one handler (JSON, secrets redacted) for uvicorn's
        # loggers too: its own config would print them plain, past the redaction.
        log_config=None,
    )


def main() -> None:
    settings = load("vlm-node-bridge")
    logs.setup(settings.log_level)
    raise_open_file_limit()
    from server.auth import Tokens
    from server.bridge.app import create_app
    from server.bridge.auth import Origins

    target, ca_file = settings.bridge_target, settings.bridge_ca_file
    tokens = Tokens.from_settings(settings)
    tokens.say_if_open(f"HTTP port {settings.http_port}")
    app = create_app(
        target,
        tokens=tokens,
        origins=Origins.from_settings(settings),
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
    )
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()
