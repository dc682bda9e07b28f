"""gRPC JobService backed by the job store."""

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from google.protobuf import json_format, struct_pb2
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

from server.destinations import Destinations
from server.domain import DomainClient, images_only
from server.errors import BadInput, Conflict, NotFound, quoted
from server.grpc_errors import translate_errors
from server.job_watcher import JobWatcher
from server.jobs import validate_job, validate_job_type, validate_input
from server.store import FINAL_STATUSES, STATUSES, DatabaseUnavailable, JobStore, parse_job_id

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 100
WATCH_RECHECK = 15.0  # seconds between re-reads of a watched job, should a notification be lost
WATCH_RETRY = 1.0  # seconds between re-reads of a watched job while the database is away (sooner once it is back)
WATCH_OUTAGE_LIMIT = 300.0  # seconds a watch waits for the database to come back before ending with UNAVAILABLE
MAX_IDEMPOTENCY_KEY = 200


def status_to_proto(status: str) -> int:
    return jobs_pb2.JobStatus.Value("JOB_STATUS_" + status.upper())


def status_from_proto(value: int) -> str | None:
    if value == jobs_pb2.JOB_STATUS_UNSPECIFIED:
        return None
    try:
        return jobs_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()
    except ValueError:
        raise BadInput(f"unknown status {value}; expected one of {', '.join(STATUSES)}") from None


def job_to_proto(row: dict[str, Any]) -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        id=str(row["id"]),
        job_type=row["job_type"],
        status=status_to_proto(row["status"]),
        domain_id=row["domain_id"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        priority=row["priority"],
        idempotency_key=row["idempotency_key"] or "",
        worker_id=row["worker_id"] or "",
    )
    job.query.update(row["query"])
    job.input.update(row["input"])
    if row["output"] is not None:
        job.output.update(row["output"])
    if row["error"]:
        job.error.code = row["error"].get("code", "")
        job.error.message = row["error"].get("message", "")
    job.created_at.FromDatetime(row["created_at"])
    job.updated_at.FromDatetime(row["updated_at"])
    job.run_after.FromDatetime(row["run_after"])
    return job


def _job_id(raw: str) -> str:
    """A job id as the store takes it. What is no UUID names no job: NOT_FOUND,
    repeating at most the start of it (a 20,000-character id echoed whole
    would outgrow the status's trailing metadata)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"job {quoted(raw)} not found") from None


def _about(row: dict[str, Any]) -> dict[str, str]:
    return {"job_id": str(row["id"])}


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
    async def CreateJob(self, request: jobs_pb2.CreateJobRequest, context) -> jobs_pb2.CreateJobResponse:
        query = struct_to_dict(request.query, request.HasField("query"))
        data = struct_to_dict(request.input, request.HasField("input"))
        domain_id, domain_query, _ = validate_job(
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
        row, created = await self.store.create_job(
            job_type=request.job_type,
            domain_id=domain_id,
            query=domain_query.to_dict(),
            input=data,
            idempotency_key=request.idempotency_key or None,
            priority=request.priority,
            max_attempts=request.max_attempts or self.default_max_attempts,
        )
        if created:
            log.info("job %s created: %s, %d images", row["id"], row["job_type"], len(images), extra=_about(row))
        return jobs_pb2.CreateJobResponse(job=job_to_proto(row))

    @translate_errors
    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context) -> jobs_pb2.ListJobsResponse:
        if request.job_type:
            validate_job_type(request.job_type)
        rows = await self.store.list_jobs(
            limit=request.limit or DEFAULT_LIST_LIMIT,
            offset=request.offset,
            status=status_from_proto(request.status),
            job_type=request.job_type or None,
        )
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(r) for r in rows])

    @translate_errors
    async def GetJob(self, request: jobs_pb2.GetJobRequest, context) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=job_to_proto(await self.store.get_job(_job_id(request.id))))

    @translate_errors
    async def RetryJob(self, request: jobs_pb2.RetryJobRequest, context) -> jobs_pb2.RetryJobResponse:
        job_type = validate_job_type(request.job_type)
        data = struct_to_dict(request.input, request.HasField("input"))
        validate_input(job_type, data, destinations=self.webhook_destinations)
        row = await self.store.retry_job(_job_id(request.id), job_type=job_type, input=data)
        log.info("job %s retried", row["id"], extra=_about(row))
        return jobs_pb2.RetryJobResponse(job=job_to_proto(row))

    @translate_errors
    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context) -> jobs_pb2.CancelJobResponse:
        row = await self.store.cancel_job(_job_id(request.id))
        log.info("job %s %s", row["id"], row["status"], extra=_about(row))
        return jobs_pb2.CancelJobResponse(job=job_to_proto(row))

    @translate_errors
    async def WatchJob(self, request: jobs_pb2.WatchJobRequest, context):
        """The job now and at every change until a final status. A watch that
        has sent the job rides out a database outage of up to
        `watch_outage_limit` seconds: it stays open, sending nothing, re-reads
        the job until the database answers, and goes on from the job's state
        then (sent when it changed). A new watch while the database is down is
        refused at once, like any call."""
        job_id = parse_job_id(request.id)
        loop = asyncio.get_running_loop()
        with self.watcher.subscribe(job_id) as changed:
            sent = None
            lost_at: float | None = None  # when the database went away under this watch
            while True:
                changed.clear()  # before reading: a change from here on wakes the wait below
                try:
                    row = await self.store.get_job(job_id)
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
                version = (row["status"], row["updated_at"])
                if version != sent:
                    sent = version
                    yield jobs_pb2.WatchJobResponse(job=job_to_proto(row))
                if row["status"] in FINAL_STATUSES:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WATCH_RECHECK):
                        await changed.wait()
