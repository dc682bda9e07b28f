"""The node's gRPC server: JobService, health and reflection, with a
graceful shutdown."""

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server import images
from server.auth import BearerAuthInterceptor, Tokens
from server.config import Settings
from server.destinations import Destinations
from server.health_monitor import HealthMonitor, HealthServicer
from server.inference_service import InferenceService
from server.job_service import JobService
from server.job_watcher import JobWatcher
from server.ops_http import OpsServer
from server.peers import check_engines, domain_client, engines
from server.queue_gauges import QueueGauges
from server.realtime import RealtimeLimits
from server.store import JobStore
from vlmnode.v1 import inference_pb2, inference_pb2_grpc, jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds for in-flight calls to finish on SIGTERM
MESSAGE_OVERHEAD = 64 * 1024  # bytes a message may carry beside its frame
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class NodeServer:
    """Owns the server and what its services use; `start()` then `stop()`."""

    def __init__(self, settings: Settings, *, address: str | None = None):
        self.settings = settings
        self.address = address or f"{settings.grpc_host}:{settings.grpc_port}"
        self.store = JobStore(settings.postgres_url)
        self.watcher = JobWatcher(self.store)
        self.domain = domain_client(settings)
        self.engines = engines(settings)
        self.health = HealthServicer()
        self.monitor = HealthMonitor(
            self.health, self.store, self.engines, jobs_service=JOB_SERVICE, inference_service=INFERENCE_SERVICE
        )
        self.gauges = QueueGauges(self.store)
        self.ops = OpsServer(settings.http_host, settings.metrics_port, self._health)
        self.limits = RealtimeLimits.from_settings(settings)
        images.set_decode_slots(settings.image_decode_slots)
        max_message = settings.realtime_max_frame_bytes + MESSAGE_OVERHEAD
        self.tokens = Tokens.from_settings(settings)
        self.server = grpc.aio.server(
            interceptors=[BearerAuthInterceptor(self.tokens)] if self.tokens.enabled else [],
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max(max_message, 16 * 1024 * 1024)),
            ]
        )
        self.inference = InferenceService(
            self.engines.vlm, self.limits, default_model=settings.vlm_model, default_batch=settings.image_batch_size
        )
        self.port = 0

    async def start(self) -> None:
        await self.store.open()
        self.watcher.start()
        # A watch opened before the LISTEN would miss the first changes.
        async with asyncio.timeout(30):
            await self.watcher.listening.wait()
        if self.domain is None:
            log.warning("posemesh is not configured (API_URL, DDS_URL, POSEMESH_EMAIL, POSEMESH_PASSWORD): jobs are refused")
        jobs_pb2_grpc.add_JobServiceServicer_to_server(
            JobService(
                self.store,
                self.watcher,
                self.domain,
                default_max_attempts=self.settings.job_max_attempts,
                max_images=self.settings.job_max_images,
                webhook_destinations=Destinations.from_settings(self.settings),
                watch_outage_limit=self.settings.watch_outage_limit,
            ),
            self.server,
        )
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(self.inference, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            JOB_SERVICE,
            INFERENCE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        if self.settings.tls:
            with open(self.settings.tls_key_file, "rb") as key, open(self.settings.tls_cert_file, "rb") as cert:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            self.port = self.server.add_secure_port(self.address, credentials)
        else:
            self.port = self.server.add_insecure_port(self.address)
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.monitor.check_once()
        self.monitor.start()
        self.gauges.start()
        self.ops.start()
        log.info("gRPC server listening on %s%s", self.address.rsplit(":", 1)[0] + f":{self.port}",
                 " (TLS)" if self.settings.tls else "")
        self.tokens.say_if_open(f"gRPC port {self.port}")

    async def _health(self) -> dict:
        await self.store.ping()
        return {"grpc_port": self.port}

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        await self.ops.stop()
        await self.gauges.stop()
        await self.monitor.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.watcher.stop()
        await self.engines.aclose()
        if self.domain is not None:
            await self.domain.aclose()
        await self.store.close()


async def serve(settings: Settings) -> None:
    node = NodeServer(settings)
    await node.start()
    try:
        await check_engines(node.engines, "vlm-node-server")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: draining calls for up to %.0f s", SHUTDOWN_GRACE)
    finally:
        await node.stop()
