"""Keeps the queue's gauges current: jobs by status, how many pending jobs
are due, and the age of the oldest. Run by the gRPC server process."""

import asyncio
import logging

from server import metrics
from server.background import BackgroundDuty
from server.errors import NodeError
from server.job_status import Status
from server.store import JobStore

log = logging.getLogger(__name__)

INTERVAL = 5.0  # seconds between readings


class QueueGauges(BackgroundDuty):
    name = "queue-gauges"

    def __init__(self, store: JobStore, *, interval: float = INTERVAL):
        super().__init__()
        self.store = store
        self.interval = interval

    async def read_once(self) -> None:
        counts = await self.store.count_by_status()
        for status in Status:
            metrics.JOBS.labels(status).set(counts.get(status, 0))
        depth, oldest = await self.store.queue_stats()
        metrics.QUEUE_DEPTH.set(depth)
        metrics.OLDEST_PENDING.set(oldest)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.read_once()
                failing = False
            except NodeError as exc:  # the store's: the database away, or refusing
                if not failing:  # once per outage, not every interval
                    log.warning("cannot read the queue's gauges: %s", exc)
                failing = True
            await asyncio.sleep(self.interval)
