"""A small HTTP endpoint for operators beside a process's real work:
`/health` and Prometheus `/metrics`. The worker serves it on its health port,
the gRPC server on METRICS_PORT (the bridge has both routes of its own)."""

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.background import BackgroundDuty
from server.nosniff import NoSniff

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[dict]]  # raises when unhealthy


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def ops_app(health: HealthCheck) -> Starlette:
    async def health_endpoint(request: Request) -> JSONResponse:
        try:
            async with asyncio.timeout(5):
                return JSONResponse({"status": "ok", **await health()})
        except Exception as exc:  # any failure is "not healthy", said in words
            return JSONResponse({"status": "unhealthy", "error": str(exc) or type(exc).__name__}, 503)

    return Starlette(
        routes=[Route("/health", health_endpoint), Route("/metrics", metrics_endpoint)],
        middleware=[Middleware(NoSniff)],
    )


class OpsServer(BackgroundDuty):
    name = "ops-http"

    def __init__(self, host: str, port: int, health: HealthCheck):
        super().__init__()
        # IPPROTO_TCP so asyncio sets TCP_NODELAY on it.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(ops_app(health), lifespan="off", access_log=False, log_config=None)
        self.server = uvicorn.Server(config)

    async def run(self) -> None:
        log.info("health and metrics on port %d", self.port)
        await self.server.serve(sockets=[self.socket])

    async def stop(self) -> None:
        self.server.should_exit = True
        await super().stop()
        self.socket.close()
