"""Writing a finished job's result into its posemesh domain, when its input
says `upload_results: true`.

The item: named `vlm_job_result_<job id>`, of data type `vlm_job_result_json`,
holding the job's output as UTF-8 JSON (the output as it was before
`uploaded` was added to it). A domain's results are listed with
`?data_type=vlm_job_result_json`, and none counts as an image. One job, one
item: a retried upload, or the job run again with PUT /api/v1/jobs/{id},
replaces that item's bytes instead of adding another
(DomainClient.upload_item).

The output gains `uploaded`: {"id", "name", "data_type", "size"} of the item.

Failures keep their kind: a transient one (5xx, network, timeout) is retried
as the job's other transient failures are; any other fails the job. Both say
`upload_failed` and why.
"""

from __future__ import annotations

import json
from typing import Any

from server.domain import DomainClient
from server.errors import NodeError
from server.jobs import Job

__all__ = ["RESULT_DATA_TYPE", "UploadFailed", "encode_result", "result_name", "upload_result", "wants_upload"]

RESULT_DATA_TYPE = "vlm_job_result_json"
RESULT_NAME_PREFIX = "vlm_job_result_"


class UploadFailed(NodeError):
    """The job's result could not be stored in its domain."""

    code = "upload_failed"

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def wants_upload(job: Job) -> bool:
    return job.validated_input.upload_results


def result_name(job_id: Any) -> str:
    return f"{RESULT_NAME_PREFIX}{job_id}"


def encode_result(output: dict[str, Any]) -> bytes:
    return json.dumps(output, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def upload_result(domain: DomainClient | None, job: Job, output: dict[str, Any]) -> dict[str, Any]:
    """Stores `output` as the job's result item; returns the output with `uploaded` added."""
    domain_id = job.domain_id
    if domain is None:
        raise UploadFailed("cannot store the result: posemesh is not configured on this worker", transient=False)
    try:
        item = await domain.upload_item(domain_id, result_name(job.id), RESULT_DATA_TYPE, encode_result(output))
    except NodeError as exc:
        raise UploadFailed(
            f"could not store the result in domain {domain_id}: {exc.message}", transient=exc.transient
        ) from None
    return {**output, "uploaded": {"id": item.id, "name": item.name, "data_type": item.data_type, "size": item.size}}
