"""Keeps the gRPC health service truthful: JobService is SERVING while the
database answers, InferenceService while the model servers do. The bridge's /ready
reads these, so it never has to reach the database or a model server itself.
They serve only when both models are there and fit for their work (the
VLM sees images). Each model server has a status of its own too, named
`server_service(inference_service, role, url)`, serving while it is in
(server/pool.py); the bridge finds them through the protocol's List.

The database is probed often, and at once when a call lost its connection
(the store's `trouble`); while it is down, faster still, so that /ready and
the store's calls (which fail at once meanwhile) recover as soon as it
answers again."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2

from server.background import BackgroundDuty
from server.pool import Engines
from server.store import JobStore

log = logging.getLogger(__name__)

DATABASE_INTERVAL = 1.0  # seconds between database probes while it answers
DATABASE_RETRY = 0.25  # seconds between database probes while it does not; also the least between two probes
OLLAMA_INTERVAL = 5.0  # seconds between Ollama probes
CHECK_TIMEOUT = 3.0  # seconds

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Probe = Callable[[], Awaitable[object]]


def server_service(inference_service: str, role: str, url: str) -> str:
    """The health service name of one model server."""
    return f"{inference_service}/{role}/{url}"


class HealthServicer(health.aio.HealthServicer):
    """grpcio's servicer with the health protocol's List (grpc/grpc-proto
    grpc/health/v1/health.proto), which grpcio's lacks: each service set,
    with its status as Check gives it (so NOT_SERVING once shutting down)."""

    def __init__(self) -> None:
        super().__init__()
        self._names: set[str] = {""}

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        self._names.add(service)
        await super().set(service, status)

    async def List(  # noqa: N802 (the protocol's name)
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            name: await self.Check(health_pb2.HealthCheckRequest(service=name), context) for name in sorted(self._names)
        })


class HealthMonitor(BackgroundDuty):
    name = "health-monitor"

    def __init__(self, servicer: health.aio.HealthServicer, store: JobStore, engines: Engines,
                 *, jobs_service: str, inference_service: str):
        super().__init__()
        self.servicer = servicer
        self.store = store
        # The database is watched from here on, so the store may refuse calls
        # at once while it is down: its recovery is found within DATABASE_RETRY.
        store.fail_fast = True
        self.jobs_service = jobs_service
        self.inference_service = inference_service
        self.engines = engines
        self.checks: dict[str, Probe] = {jobs_service: store.ping, inference_service: engines.ready}
        self._last: dict[str, int] = {}

    async def check_once(self) -> None:
        for service, probe in self.checks.items():
            await self._check(service, probe)
        await self._publish_servers()

    async def _check(self, service: str, probe: Probe) -> int:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await probe()
            status = SERVING
        except Exception as exc:  # any failure means not ready; say why once
            status = NOT_SERVING
            if self._last.get(service) != NOT_SERVING:
                log.warning("%s is not serving: %s", service, getattr(exc, "message", exc) or type(exc).__name__)
        if self._last.get(service) != status:
            if status == SERVING and service in self._last:
                log.info("%s is serving again", service)
            await self.servicer.set(service, status)
            self._last[service] = status
        return status

    async def _watch_database(self) -> None:
        trouble = self.store.trouble
        while True:
            trouble.clear()  # before probing: trouble from here on asks for another probe
            status = await self._check(self.jobs_service, self.checks[self.jobs_service])
            await asyncio.sleep(DATABASE_RETRY)
            if status == SERVING:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DATABASE_INTERVAL - DATABASE_RETRY):
                        await trouble.wait()

    async def _watch_ollama(self) -> None:
        while True:
            await self._check(self.inference_service, self.checks[self.inference_service])
            await self._publish_servers()
            await asyncio.sleep(OLLAMA_INTERVAL)

    async def _publish_servers(self) -> None:
        """Each model server's status, as the pools found it (engines.ready just asked each)."""
        for role, server in self.engines.servers():
            await self.servicer.set(server_service(self.inference_service, role, server.shown),
                                    NOT_SERVING if server.out else SERVING)

    async def run(self) -> None:
        await asyncio.gather(self._watch_database(), self._watch_ollama())
