"""Keeps the gRPC health service truthful: JobService is SERVING while the
database answers, InferenceService while Ollama does. The bridge's /ready
reads these, so it never has to reach the database or Ollama itself.
Ollama serves only when both models are there and fit for their work (the
VLM sees images)."""

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from server.background import BackgroundDuty
from server.engine import OllamaEngine
from server.store import JobStore

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds
CHECK_TIMEOUT = 3.0  # seconds

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor(BackgroundDuty):
    name = "health-monitor"

    def __init__(self, servicer: health.aio.HealthServicer, store: JobStore, engine: OllamaEngine,
                 *, jobs_service: str, inference_service: str):
        super().__init__()
        self.servicer = servicer
        self.checks = {jobs_service: store.ping, inference_service: engine.ready}
        self._last: dict[str, int] = {}

    async def check_once(self) -> None:
        for service, probe in self.checks.items():
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await probe()
                status = SERVING
            except Exception as exc:  # any failure means not ready; say why once
                status = NOT_SERVING
                if self._last.get(service) != NOT_SERVING:
                    log.warning("%s is not serving: %s", service, getattr(exc, "message", exc) or type(exc).__name__)
            if self._last.get(service) != status:
                await self.servicer.set(service, status)
                self._last[service] = status

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(CHECK_INTERVAL)
