"""`python -m server.bridge.main`: the HTTP/WebSocket bridge, alone or beside
the gRPC server (`server.node` starts it). GRPC_TARGET points it at a remote
node; by default it uses localhost:GRPC_PORT."""

import uvicorn

from server.config import Settings, load

WS_PING_INTERVAL = 10.0  # seconds, as the original server pinged
WS_PING_TIMEOUT = 20.0  # seconds without a pong before the socket is closed
WS_OVERHEAD = 64 * 1024  # bytes a WebSocket message may carry beside a frame


def uvicorn_options(settings: Settings) -> dict:
    return dict(
        ws="websockets-sansio",
        ws_ping_interval=WS_PING_INTERVAL,
        ws_ping_timeout=WS_PING_TIMEOUT,
        ws_max_size=settings.realtime_max_frame_bytes + WS_OVERHEAD,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def main() -> None:
    settings = load("vlm-node-bridge")
    from server.bridge.app import create_app

    target = settings.grpc_target or f"localhost:{settings.grpc_port}"
    uvicorn.run(
        create_app(target),
        host=settings.http_host,
        port=settings.http_port,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()
