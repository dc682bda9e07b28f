"""Job types, what their input must hold, and a job as the store returns it.
Used by the gRPC servicer to refuse bad jobs at the door, and by the worker
to read a job's input as it was validated."""

import dataclasses
import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from server.destinations import Destinations
from server.domain import DomainQuery, validate_domain_id, validate_query
from server.errors import BadInput, listed, quoted
from server.job_status import Status

TASK_TIMING = "task_timing_v1"
VLM_ONLY = "vlm_only"
JOB_TYPES = (TASK_TIMING, VLM_ONLY)
MAX_PROMPT_CHARS = 8000
# `job_type` in the input picks the pipeline, as the original worker read it
# (its worker/vlm.py: inputs.get('job_type', 'task_timing_v1')).
INPUT_KEYS = frozenset({"prompt", "vlm_prompt", "webhook_url", "job_type", "upload_results"})


@dataclass(frozen=True)
class JobInput:
    pipeline: str  # the pipeline that runs: input.job_type, else the job's own type
    vlm_prompt: str
    prompt: str  # the LLM's question; task_timing_v1 only
    webhook_url: str  # empty: no delivery
    upload_results: bool = False  # store the output in the job's domain as a data item
    # The input as it is stored and shown back: the caller's fields, with
    # those validated in a cleaned form (webhook_url) in that form.
    stored: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def validate_job_type(job_type: Any) -> str:
    if job_type not in JOB_TYPES:
        raise BadInput(f"unknown job_type {quoted(job_type)}; expected one of {', '.join(JOB_TYPES)}")
    return job_type


def _text(data: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = data.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadInput(f"input.{key} must be a string")
    if "\x00" in value:  # PostgreSQL cannot store it
        raise BadInput(f"input.{key} must not contain NUL characters")
    if len(value) > MAX_PROMPT_CHARS:
        raise BadInput(f"input.{key} is longer than {MAX_PROMPT_CHARS} characters")
    if required and not value.strip():
        raise BadInput(f"input.{key} is required")
    return value


def validate_input(job_type: str, data: Any, *, destinations: Destinations | None = None) -> JobInput:
    """`destinations`, when given, refuses at once a webhook_url plainly
    pointing where the node may not send (a literal private address,
    localhost); the worker checks every delivery in full."""
    if not isinstance(data, Mapping):
        raise BadInput("input must be an object")
    unknown = set(data) - INPUT_KEYS
    if unknown:
        raise BadInput(f"unknown input field(s) for {job_type}: {listed(sorted(unknown))}")
    pipeline = job_type
    if data.get("job_type") not in (None, ""):
        if data["job_type"] not in JOB_TYPES:
            raise BadInput(f"unknown input.job_type {quoted(data['job_type'])}; expected one of {', '.join(JOB_TYPES)}")
        pipeline = data["job_type"]
    upload_results = data.get("upload_results", False)
    if upload_results is None:
        upload_results = False
    if not isinstance(upload_results, bool):
        raise BadInput(f"input.upload_results must be true or false, got {quoted(upload_results)}")
    if pipeline == TASK_TIMING:
        prompt = _text(data, "prompt", required=True)
        vlm_prompt = _text(data, "vlm_prompt", required=True)
    else:  # vlm_only: the original took the VLM prompt from either field
        prompt = _text(data, "prompt", required=False)
        vlm_prompt = _text(data, "vlm_prompt", required=False) or prompt
        if not vlm_prompt.strip():
            raise BadInput("input.vlm_prompt is required")
    webhook_url = _text(data, "webhook_url", required=False).strip()
    if webhook_url:
        try:
            parts = urlsplit(webhook_url)
            _ = parts.port  # raises for a port that is no number, or over 65535
        except ValueError:  # e.g. "http://[oops/": no URL at all
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"input.webhook_url must be an http(s) URL, got {quoted(webhook_url)}")
        if destinations is not None:
            destinations.check_url(webhook_url)
    stored = dict(data)
    if isinstance(stored.get("webhook_url"), str):
        stored["webhook_url"] = webhook_url
    return JobInput(
        pipeline=pipeline,
        vlm_prompt=vlm_prompt,
        prompt=prompt,
        webhook_url=webhook_url,
        upload_results=upload_results,
        stored=stored,
    )


def validate_job(
    job_type: Any, domain_id: Any, query: Any, data: Any, *, destinations: Destinations | None = None
) -> tuple[str, DomainQuery, JobInput]:
    job_type = validate_job_type(job_type)
    domain_id = validate_domain_id(domain_id)
    return domain_id, validate_query(query), validate_input(job_type, data, destinations=destinations)


@dataclass(frozen=True)
class Job:
    """A job as the store holds it: one row of `jobs`."""

    id: uuid.UUID
    job_type: str
    status: Status
    domain_id: str
    query: dict[str, Any]
    input: dict[str, Any]  # as stored (JobInput.stored), and shown back to clients
    output: dict[str, Any] | None
    error: dict[str, Any] | None  # {"code", "message"}
    attempts: int
    max_attempts: int
    priority: int
    run_after: datetime  # not claimed before
    lease_until: datetime | None  # while held: taken back (rescue_jobs) after
    worker_id: str | None  # while held
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime  # its place in the queue within its priority
    failing_since: datetime | None  # when its current run of failed attempts began
    failures: int  # the failed attempts in that run

    @functools.cached_property
    def validated_input(self) -> JobInput:
        """The input as a worker reads it: what was validated when it was stored."""
        return validate_input(self.job_type, self.input)


@dataclass(frozen=True)
class JobEvent:
    """One change of a job's status (`job_events`)."""

    status: Status
    attempt: int
    error: dict[str, Any] | None
    at: datetime
