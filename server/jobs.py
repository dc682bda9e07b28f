"""Job types and what their input must hold. Used by the gRPC servicer to
refuse bad jobs at the door, and by the worker to read a job's input."""

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from server.destinations import Destinations
from server.domain import DomainQuery, validate_domain_id, validate_query
from server.errors import BadInput, listed, quoted

TASK_TIMING = "task_timing_v1"
VLM_ONLY = "vlm_only"
JOB_TYPES = (TASK_TIMING, VLM_ONLY)
MAX_PROMPT_CHARS = 8000
INPUT_KEYS = {
    TASK_TIMING: {"prompt", "vlm_prompt", "webhook_url"},
    VLM_ONLY: {"prompt", "vlm_prompt", "webhook_url"},
}


@dataclass(frozen=True)
class JobInput:
    vlm_prompt: str
    prompt: str  # the LLM's instruction; task_timing_v1 only
    webhook_url: str  # empty: no delivery


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
    unknown = set(data) - INPUT_KEYS[job_type]
    if unknown:
        raise BadInput(f"unknown input field(s) for {job_type}: {listed(sorted(unknown))}")
    if job_type == TASK_TIMING:
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
            parts.port  # raises for a port that is no number, or over 65535
        except ValueError:  # e.g. "http://[oops/": no URL at all
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"input.webhook_url must be an http(s) URL, got {quoted(webhook_url)}")
        if destinations is not None:
            destinations.check_url(webhook_url)
    return JobInput(vlm_prompt=vlm_prompt, prompt=prompt, webhook_url=webhook_url)


def validate_job(
    job_type: Any, domain_id: Any, query: Any, data: Any, *, destinations: Destinations | None = None
) -> tuple[str, DomainQuery, JobInput]:
    job_type = validate_job_type(job_type)
    domain_id = validate_domain_id(domain_id)
    return domain_id, validate_query(query), validate_input(job_type, data, destinations=destinations)
