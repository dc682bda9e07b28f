"""Takes back jobs whose worker stopped renewing its lease (it died, or lost
the database), so another worker runs them: at once, in their place in the
queue. A lost lease counts as a failed attempt, so a job that keeps killing
its workers fails once out of attempts or out of its retry budget."""

import asyncio
import logging

from server.background import BackgroundDuty
from server.errors import NodeError
from server.store import JobStore

log = logging.getLogger(__name__)


class JobRescuer(BackgroundDuty):
    name = "job-rescuer"

    def __init__(self, store: JobStore, *, interval: float, retry_for: float | None = None):
        super().__init__()
        self.store = store
        self.interval = interval  # seconds between sweeps
        self.retry_for = retry_for  # seconds a job may go on failing; None: max_attempts alone

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                for job in await self.store.rescue_jobs(self.retry_for):
                    log.warning("job %s: lease expired; now %s", job.id, job.status, extra={"job_id": str(job.id)})
            except NodeError as exc:  # the store's: the database away, or refusing
                log.warning("rescuer cannot reach the database: %s", exc)
