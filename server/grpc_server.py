"""The node's gRPC server: JobService, health and reflection, with a
graceful shutdown."""

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

from server.config import Settings
from server.job_service import JobService
from server.job_watcher import JobWatcher
from server.peers import check_ollama, domain_client, ollama_engine
from server.store import JobStore

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds for in-flight calls to finish on SIGTERM
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class NodeServer:
    """Owns the server and what its services use; `start()` then `stop()`."""

    def __init__(self, settings: Settings, *, address: str | None = None):
        self.settings = settings
        self.address = address or f"{settings.grpc_host}:{settings.grpc_port}"
        self.store = JobStore(settings.postgres_url)
        self.watcher = JobWatcher(self.store)
        self.domain = domain_client(settings)
        self.engine = ollama_engine(settings)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        self.port = 0

    async def start(self) -> None:
        await self.store.open()
        self.watcher.start()
        if self.domain is None:
            log.warning("posemesh is not configured (API_URL, DDS_URL, POSEMESH_EMAIL, POSEMESH_PASSWORD): jobs are refused")
        jobs_pb2_grpc.add_JobServiceServicer_to_server(
            JobService(
                self.store,
                self.watcher,
                self.domain,
                default_max_attempts=self.settings.job_max_attempts,
                max_images=self.settings.job_max_images,
            ),
            self.server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        self.port = self.server.add_insecure_port(self.address)
        await self.server.start()
        for name in ("", names[0]):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC server listening on %s", self.address.rsplit(":", 1)[0] + f":{self.port}")

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.watcher.stop()
        await self.engine.aclose()
        if self.domain is not None:
            await self.domain.aclose()
        await self.store.close()


async def serve(settings: Settings) -> None:
    node = NodeServer(settings)
    await node.start()
    await check_ollama(node.engine, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining calls for up to %.0f s", SHUTDOWN_GRACE)
    await node.stop()
