"""gRPC JobService backed by the job store."""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from server.destinations import Destinations
from server.domain import DomainClient, images_only
from server.errors import BadInput, Conflict, DatabaseUnavailable, NotFound, quoted
from server.grpc_errors import translate_errors
from server.job_status import FINAL, Status, status_from_proto, status_to_proto
from server.job_watcher import JobWatcher
from server.jobs import Job, validate_input, validate_job, validate_job_type
from server.store import JobStore, parse_job_id
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 100
WATCH_RECHECK = 15.0  # seconds between re-reads of a watched job, should a notification be lost
WATCH_RETRY = 1.0  # seconds between re-reads of a watched job while the database is away (sooner once it is back)
WATCH_OUTAGE_LIMIT = 300.0  # seconds a watch waits for the database to come back before ending with UNAVAILABLE
MAX_IDEMPOTENCY_KEY = 200


def job_to_proto(job: Job) -> jobs_pb2.Job:
    message = jobs_pb2.Job(
        id=str(job.id),
        job_type=job.job_type,
        status=status_to_proto(job.status),
        domain_id=job.domain_id,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        priority=job.priority,
        idempotency_key=job.idempotency_key or "",
        worker_id=job.worker_id or "",
    )
    message.query.update(job.query)
    message.input.update(job.input)
    if job.output is not None:
        message.output.update(job.output)
    if job.error:
        message.error.code = job.error.get("code", "")
        message.error.message = job.error.get("message", "")
    message.created_at.FromDatetime(job.created_at)
    message.updated_at.FromDatetime(job.updated_at)
    message.run_after.FromDatetime(job.run_after)
    return message


def _job_id(raw: str) -> str:
    """A job id as the store takes it. What is no UUID names no job: NOT_FOUND,
    repeating at most the start of it (a 20,000-character id echoed whole
    would outgrow the status's trailing metadata)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"job {quoted(raw)} not found") from None


def _about(job: Job) -> dict[str, str]:
    return {"job_id": str(job.id)}


def struct_to_dict(message: struct_pb2.Struct, present: bool) -> dict[str, Any]:
    return json_format.MessageToDict(message) if present else {}


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        store: JobStore,
        watcher: JobWatcher,
        domain: DomainClient | None,
        *,
        default_max_attempts: int = 5,
        max_images: int = 1000,
        webhook_destinations: Destinations | None = None,
        watch_outage_limit: float = WATCH_OUTAGE_LIMIT,
    ):
        self.store = store
        self.watcher = watcher
        self.domain = domain
        self.default_max_attempts = default_max_attempts
        self.max_images = max_images
        self.webhook_destinations = webhook_destinations  # None: webhook URLs are checked at delivery only
        self.watch_outage_limit = watch_outage_limit

    @translate_errors
    async def CreateJob(self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.CreateJobResponse:
        query = struct_to_dict(request.query, request.HasField("query"))
        data = struct_to_dict(request.input, request.HasField("input"))
        domain_id, domain_query, job_input = validate_job(
            request.job_type, request.domain_id, query, data, destinations=self.webhook_destinations
        )
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise BadInput(f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} characters")
        if not request.idempotency_key.isprintable():
            raise BadInput("idempotency_key must be printable text")
        if not 0 <= request.max_attempts <= 100:
            raise BadInput("max_attempts must be between 1 and 100 (0 for the default)")
        if self.domain is None:
            raise Conflict(
                "posemesh is not configured: set API_URL, DDS_URL, POSEMESH_EMAIL and POSEMESH_PASSWORD"
            )
        # A cheap metadata request, so a query matching nothing is refused now
        # rather than failing later in a worker.
        images = images_only(await self.domain.list_items(domain_id, domain_query))
        if not images:
            raise Conflict("No data found")
        if len(images) > self.max_images:
            raise BadInput(f"the query matches {len(images)} images; a job takes at most {self.max_images}")
        job, created = await self.store.create_job(
            job_type=request.job_type,
            domain_id=domain_id,
            query=domain_query.to_dict(),
            input=job_input.stored,
            idempotency_key=request.idempotency_key or None,
            priority=request.priority,
            max_attempts=request.max_attempts or self.default_max_attempts,
        )
        if created:
            log.info("job %s created: %s, %d images", job.id, job.job_type, len(images), extra=_about(job))
        return jobs_pb2.CreateJobResponse(job=job_to_proto(job))

    @translate_errors
    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.ListJobsResponse:
        if request.job_type:
            validate_job_type(request.job_type)
        jobs = await self.store.list_jobs(
            limit=request.limit or DEFAULT_LIST_LIMIT,
            offset=request.offset,
            status=status_from_proto(request.status),
            job_type=request.job_type or None,
        )
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(job) for job in jobs])

    @translate_errors
    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=job_to_proto(await self.store.get_job(_job_id(request.id))))

    @translate_errors
    async def RetryJob(self, request: jobs_pb2.RetryJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.RetryJobResponse:
        job_type = validate_job_type(request.job_type)
        data = struct_to_dict(request.input, request.HasField("input"))
        job_input = validate_input(job_type, data, destinations=self.webhook_destinations)
        job = await self.store.retry_job(_job_id(request.id), job_type=job_type, input=job_input.stored)
        log.info("job %s retried", job.id, extra=_about(job))
        return jobs_pb2.RetryJobResponse(job=job_to_proto(job))

    @translate_errors
    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.CancelJobResponse:
        job = await self.store.cancel_job(_job_id(request.id))
        log.info("job %s %s", job.id, job.status, extra=_about(job))
        return jobs_pb2.CancelJobResponse(job=job_to_proto(job))

    @translate_errors
    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        """The job now and at every change until a final status. A watch that
        has sent the job rides out a database outage of up to
        `watch_outage_limit` seconds: it stays open, sending nothing, re-reads
        the job until the database answers, and goes on from the job's state
        then (sent when it changed). A new watch while the database is down is
        refused at once, like any call."""
        job_id = parse_job_id(request.id)
        loop = asyncio.get_running_loop()
        with self.watcher.subscribe(job_id) as changed:
            sent: tuple[Status, datetime] | None = None
            lost_at: float | None = None  # when the database went away under this watch
            while True:
                changed.clear()  # before reading: a change from here on wakes the wait below
                try:
                    job = await self.store.get_job(job_id)
                except DatabaseUnavailable:
                    if sent is None:
                        raise
                    lost_at = lost_at if lost_at is not None else loop.time()
                    if loop.time() - lost_at >= self.watch_outage_limit:
                        log.warning("watch of job %s ends: the database has been away for %.0f s", job_id,
                                    loop.time() - lost_at, extra={"job_id": str(job_id)})
                        raise
                    await self.store.wait_for_database(WATCH_RETRY)
                    continue
                lost_at = None
                version = (job.status, job.updated_at)
                if version != sent:
                    sent = version
                    yield jobs_pb2.WatchJobResponse(job=job_to_proto(job))
                if job.status in FINAL:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WATCH_RECHECK):
                        await changed.wait()
