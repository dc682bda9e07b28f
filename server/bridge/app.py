"""The bridge's Starlette app: REST jobs, the WebSocket, health, over one
gRPC channel to the node.

Around every route, outermost first: `X-Content-Type-Options: nosniff` on
every answer; the origin check and CORS (server/bridge/auth.py); the token."""

import contextlib
from collections.abc import AsyncIterator
from typing import cast

import grpc
from grpc_health.v1 import health_pb2_grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ExceptionHandler

from server.auth import Tokens
from server.bridge import console, health, openapi, rest, websocket
from server.bridge.auth import CheckOrigin, Origins, RequireToken
from server.bridge.errors import grpc_error_handler, http_error_handler
from server.nosniff import NoSniff
from vlmnode.v1 import inference_pb2_grpc, jobs_pb2_grpc

MAX_GRPC_MESSAGE = 16 * 1024 * 1024


def create_app(
    target: str,
    *,
    tokens: Tokens | None = None,
    origins: Origins | None = None,
    root_certificates: bytes | None = None,
    sse_ping_interval: float = 15.0,
) -> Starlette:
    """`target` is the gRPC server's address, e.g. "localhost:50051", reached
    over TLS when `root_certificates` are given; callers must bring one of
    `tokens`, from a page `origins` allows (default: the bridge's own and
    localhost pages); event streams send a keep-alive comment every
    `sse_ping_interval` seconds."""
    tokens = tokens or Tokens([])
    origins = origins or Origins()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        options = [
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
        ]
        if root_certificates:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        app.state.jobs = jobs_pb2_grpc.JobServiceStub(channel)
        app.state.inference = inference_pb2_grpc.InferenceServiceStub(channel)
        app.state.health = health_pb2_grpc.HealthStub(channel)
        async with channel:
            yield

    app = Starlette(
        routes=[*rest.routes, *openapi.routes, *websocket.routes, *health.routes, *console.routes],
        middleware=[
            Middleware(NoSniff),
            Middleware(CheckOrigin, origins=origins),
            Middleware(RequireToken, tokens=tokens),
        ],
        # Starlette types every handler as taking any Exception; each of these takes the one it is registered for.
        exception_handlers={
            grpc.aio.AioRpcError: cast(ExceptionHandler, grpc_error_handler),
            HTTPException: cast(ExceptionHandler, http_error_handler),
        },
        lifespan=lifespan,
    )
    app.state.sse_ping_interval = sse_ping_interval
    return app
