"""`python -m server.bridge.main`: the HTTP/WebSocket bridge, alone or beside
the gRPC server (`server.node` starts it). GRPC_TARGET points it at a remote
node; by default it uses localhost:GRPC_PORT."""

from pathlib import Path

import uvicorn

from server.config import Settings, load

WS_OVERHEAD = 64 * 1024  # bytes a WebSocket message may carry beside a frame


def uvicorn_options(settings: Settings) -> dict:
    tls = dict(ssl_certfile=settings.tls_cert_file, ssl_keyfile=settings.tls_key_file) if settings.tls else {}
    return dict(
        **tls,
        ws="websockets-sansio",
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=2 * settings.ws_ping_interval,  # no pong for this long: the client is gone
        ws_max_size=settings.realtime_max_frame_bytes + WS_OVERHEAD,
        # Frames are JPEG and answers a few words: deflate would only spend CPU on both ends.
        ws_per_message_deflate=False,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def main() -> None:
    settings = load("vlm-node-bridge")
    from server.auth import Tokens
    from server.bridge.app import create_app

    target = settings.grpc_target or f"localhost:{settings.grpc_port}"
    ca_file = settings.grpc_ca_file or (settings.tls_cert_file if settings.tls else "")
    tokens = Tokens.from_settings(settings)
    tokens.say_if_open(f"HTTP port {settings.http_port}")
    app = create_app(target, tokens=tokens, root_certificates=Path(ca_file).read_bytes() if ca_file else None)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()
