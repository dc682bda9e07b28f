"""The worker: claims jobs, runs their pipeline under a renewed lease, writes
their results out (status `uploading`: to the job's domain when its input asks
for it, then to its webhook), and records how each attempt ended."""

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from server import logs, metrics
from server.destinations import Destinations
from server.errors import BadInput, NodeError
from server.job_status import Status
from server.jobs import Job
from server.retry import RetryStrategy, duration
from server.store import JOBS_READY_CHANNEL, Caption, Claim, JobStore
from worker.pipelines import PIPELINES, Peers, Pipeline, run_job
from worker.rescuer import JobRescuer
from worker.upload import upload_result, wants_upload
from worker.webhook import deliver

log = logging.getLogger(__name__)

POLL_INTERVAL = 5.0  # seconds; a safety net, since notifications wake us first
DB_ERROR_PAUSE = 1.0  # seconds to wait after the database failed us
STOP_GRACE = 30.0  # seconds running jobs get to finish on SIGTERM before being handed back
JOB_RETRY_JITTER = 0.2  # fraction of each wait between a job's attempts taken off at random


CANCELLED = {"code": "cancelled", "message": "cancelled by request"}


class JobCancelled(Exception):
    pass


class _Context:
    def __init__(self, store: JobStore, claim: Claim):
        self.store = store
        self.claim = claim
        self.job = claim.job
        self.progressed = False  # a caption was kept: the job's run of failures is over

    async def advance(self, status: Status) -> None:
        if await self.store.advance_job(self.claim, status) is None:
            raise JobCancelled()

    async def captions(self, recipe: str) -> dict[str, Caption]:
        return await self.store.captions(self.claim.id, recipe)

    async def save_caption(self, recipe: str, caption: Caption) -> None:
        await self.store.save_caption(self.claim.id, recipe, caption)
        if not self.progressed:
            self.progressed = True
            if self.job.failing_since is not None or self.job.failures:
                await self.store.end_failing_streak(self.claim)


def _outcome(job: Job | None) -> str:
    """How an attempt ended, for the job duration metric."""
    if job is None:
        return "lost"
    return "retried" if job.status == Status.PENDING else job.status.value


def _webhook_url(job: Job) -> str:
    """Where the job's result goes ("": nowhere), as its input was validated."""
    try:
        return job.validated_input.webhook_url
    except BadInput:  # stored before its input was refused so; its attempt fails saying why
        return ""


def gave_up(failing_for: float, failures: int, max_attempts: int, retry_for: float | None) -> str:
    """What a job waited for before it was failed for good, said after its
    error (rescue_jobs in sql/queries.sql says the same of a lost lease)."""
    if retry_for is not None and failing_for >= retry_for:
        return f" (retried for {duration(failing_for)} over {failures} attempts)"
    if failures > 1:
        return f" (retried for {duration(failing_for)} over {failures} attempts; max_attempts {max_attempts} reached)"
    return f" (max_attempts {max_attempts} reached)"


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        store: JobStore,
        peers: Peers,
        *,
        worker_name: str | None = None,
        pipelines: dict[str, Pipeline] = PIPELINES,
    ):
        self.store = store
        self.peers = peers
        self.settings = peers.settings
        self.id = worker_name or worker_id()
        self.pipelines = pipelines
        self.job_types = list(pipelines)
        # How long a job's transient failures are retried, and the waits
        # between; each job brings its own max_attempts.
        self.retry = RetryStrategy(
            max_attempts=self.settings.job_max_attempts,
            wait=self.settings.job_retry_wait,
            max_wait=self.settings.job_retry_max_wait,
            jitter=JOB_RETRY_JITTER,
            retry_for=self.settings.job_retry_for,
        )
        self.webhook_retry = RetryStrategy(max_attempts=self.settings.webhook_attempts, wait=1.0, max_wait=30.0)
        self.http = httpx.AsyncClient()
        self.webhook_destinations = Destinations.from_settings(self.settings)  # where deliveries may go
        self.rescuer = JobRescuer(
            store, interval=max(self.settings.job_lease / 2, 0.05), retry_for=self.settings.job_retry_for
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._running: dict[uuid.UUID, asyncio.Task] = {}

    async def run(self) -> None:
        """Runs until `stop()`; then waits for the jobs in hand."""
        listener = asyncio.create_task(self._listen(), name="worker-listen")
        self.rescuer.start()
        log.info("worker %s ready for %s", self.id, ", ".join(self.job_types))
        try:
            while not self._stopping.is_set():
                free = self.settings.worker_jobs - len(self._running)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                self._wake.clear()
                claims = await self._claim(free)
                if not claims:
                    await self._idle()
                    continue
                for claim in claims:
                    task = asyncio.create_task(self._run_job(claim), name=f"job-{claim.id}")
                    self._running[claim.id] = task
                    task.add_done_callback(functools.partial(self._job_done, claim.id))
        finally:
            listener.cancel()
            await self.rescuer.stop()
            await self._drain()
            await self.http.aclose()

    @property
    def running(self) -> list[uuid.UUID]:
        """The jobs this worker holds now."""
        return list(self._running)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._slot_freed.set()

    def _job_done(self, job_id: uuid.UUID, _task: asyncio.Task | None = None) -> None:
        self._running.pop(job_id, None)
        self._slot_freed.set()

    async def _claim(self, limit: int) -> list[Claim]:
        try:
            claims = await self.store.claim_jobs(self.id, self.job_types, self.settings.job_lease, limit)
        except NodeError as exc:  # the store's: the database away, or refusing
            log.warning("worker %s cannot claim: %s", self.id, exc)
            await asyncio.sleep(DB_ERROR_PAUSE)
            return []
        now = datetime.now(UTC)
        for claim in claims:
            wait = (now - max(claim.job.queued_at, claim.job.run_after)).total_seconds()
            metrics.PICKUP.observe(max(wait, 0.0))
            log.info("job %s claimed by %s (attempt %d, %.3f s after it was due)", claim.id, self.id, claim.attempt,
                     wait, extra={"job_id": str(claim.id)})
        return claims

    async def _idle(self) -> None:
        timeout = POLL_INTERVAL
        try:
            due = await self.store.next_run_after(self.job_types)
            if due is not None:
                timeout = min(timeout, max((due - datetime.now(UTC)).total_seconds(), 0.01))
        except NodeError:  # the store's; polling goes on as if no job were due
            pass
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _listen(self) -> None:
        async for _ in self.store.listen(JOBS_READY_CHANNEL):
            self._wake.set()

    async def _drain(self) -> None:
        if not self._running:
            return
        log.info("worker %s stopping: waiting up to %.0f s for %d job(s)", self.id, STOP_GRACE, len(self._running))
        done, pending = await asyncio.wait(list(self._running.values()), timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _run_job(self, claim: Claim) -> None:
        logs.job_id.set(str(claim.id))  # this task's and its children's log lines
        started = time.monotonic()
        outcome = "lost"
        work = asyncio.create_task(self._attempt(claim))
        keeper = asyncio.create_task(self._keep_lease(claim, work))
        try:
            failure, outcome = await work
        except asyncio.CancelledError:
            reason = keeper.result() if keeper.done() else None
            if reason == "lost":
                log.warning("job %s: claim lost; dropping this attempt", claim.id)
            elif reason == "cancelling":
                outcome = "cancelled"
                await self._finish(claim, Status.CANCELLED, error=CANCELLED)
            else:  # the worker itself is stopping: hand the job back
                outcome = "handed_back"
                stopped = {"code": "worker_stopped", "message": f"worker {self.id} stopped"}
                await asyncio.shield(self._finish(claim, Status.PENDING, error=stopped))
                raise
            return
        finally:
            keeper.cancel()
            metrics.JOB_DURATION.labels(claim.job.job_type, outcome).observe(time.monotonic() - started)
        url = _webhook_url(claim.job)
        if failure is not None and url:
            # The job is no longer held, so no lease to keep: say why it failed.
            try:
                await self._deliver(url, claim, data=None, error=failure)
            except NodeError as exc:
                log.warning("job %s: could not report the failure to its webhook: %s", claim.id, exc.message)

    async def _attempt(self, claim: Claim) -> tuple[dict[str, Any] | None, str]:
        """Runs the pipeline and records the outcome, the result's upload to
        the domain and a successful webhook delivery included, under the
        lease. Returns the error of a job that failed for good (for its
        webhook), and the status it ended in."""
        ctx = _Context(self.store, claim)
        output = None
        try:
            output = await run_job(ctx, self.peers, self.pipelines)
            if wants_upload(claim.job):
                await ctx.advance(Status.UPLOADING)
                output = await upload_result(self.peers.domain, claim.job, output)
        except JobCancelled:
            job = await self._finish(claim, Status.CANCELLED, error=CANCELLED)
        except Exception as exc:
            # A failed upload keeps the output when the job fails for good: the work is done.
            return await self._failed(claim, exc, progressed=ctx.progressed, output=output)
        else:
            job = await self._completed(claim, output)
        return None, _outcome(job)

    async def _keep_lease(self, claim: Claim, work: asyncio.Task) -> str:
        """Renews the lease while the attempt runs; cancels it when the job
        is to stop or the claim was lost."""
        while True:
            await asyncio.sleep(self.settings.job_lease / 3)
            try:
                status = await self.store.renew_lease(claim, self.settings.job_lease)
            except NodeError as exc:  # the store's: the database away, or refusing
                log.warning("job %s: cannot renew the lease: %s", claim.id, exc)
                continue
            if status is None or status == Status.CANCELLING:
                work.cancel()
                return "lost" if status is None else "cancelling"

    async def _completed(self, claim: Claim, output: dict[str, Any]) -> Job | None:
        url = _webhook_url(claim.job)
        if url:
            if await self.store.advance_job(claim, Status.UPLOADING) is None:
                return await self._finish(claim, Status.CANCELLED, error=CANCELLED)
            try:
                await self._deliver(url, claim, data=output, error=None)
            except NodeError as exc:
                error = {"code": exc.code, "message": exc.message}
                return await self._finish(claim, Status.FAILED, output=output, error=error)
        return await self._finish(claim, Status.COMPLETED, output=output)

    async def _failed(
        self, claim: Claim, exc: Exception, *, progressed: bool, output: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any] | None, str]:
        if isinstance(exc, NodeError):  # the store's DatabaseUnavailable among them, transient
            error, transient = {"code": exc.code, "message": exc.message}, exc.transient
        else:
            log.exception("job %s: unexpected error", claim.id, exc_info=exc)
            error, transient = {"code": "internal", "message": f"internal error: {type(exc).__name__}"}, False
        if transient:
            # The run of failures this one belongs to: a new one when this
            # attempt made progress (end_failing_streak has said so).
            since = None if progressed else claim.job.failing_since
            failures = (0 if progressed else claim.job.failures) + 1
            failing_for = max((datetime.now(UTC) - since).total_seconds(), 0.0) if since else 0.0
            retry = dataclasses.replace(self.retry, max_attempts=claim.job.max_attempts)
            if retry.should_retry(claim.attempt, failing_for):
                delay = retry.delay(failures)
                log.warning("job %s: attempt %d failed (%s); retrying in %.1f s (failing for %s)", claim.id,
                            claim.attempt, error["message"], delay, duration(failing_for))
                job = await self._finish(claim, Status.PENDING, error=error, retry_in=delay, failed=True)
                return None, _outcome(job)
            error["message"] += gave_up(failing_for, failures, claim.job.max_attempts, retry.retry_for)
        log.warning("job %s failed: %s", claim.id, error["message"])
        job = await self._finish(claim, Status.FAILED, output=output, error=error, failed=True)
        return (error if job and job.status == Status.FAILED else None), _outcome(job)

    async def _deliver(
        self, url: str, claim: Claim, *, data: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        try:
            await deliver(
                self.http,
                url,
                job_id=str(claim.id),
                data=data,
                error=error,
                secret=self.settings.webhook_secret or None,
                retry=self.webhook_retry,
                destinations=self.webhook_destinations,
            )
        except NodeError:
            metrics.WEBHOOKS.labels("failed").inc()
            raise
        metrics.WEBHOOKS.labels("delivered").inc()

    async def _finish(self, claim: Claim, status: Status, **kw: Any) -> Job | None:
        job = await self.store.finish_job(claim, status, **kw)
        if job is None:
            log.warning("job %s: claim lost before the result was saved; dropping it", claim.id)
        else:
            log.info("job %s %s", claim.id, job.status)
        return job
