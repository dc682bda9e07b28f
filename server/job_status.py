"""A job's statuses, defined once. The SQL's status literals, the migration's
CHECK and the proto's JobStatus are checked against them (tests/test_store.py);
the proto's names are these, as JOB_STATUS_<NAME>."""

from enum import StrEnum
from typing import cast

from server.errors import BadInput
from vlmnode.v1 import jobs_pb2


class Status(StrEnum):
    PENDING = "pending"  # waiting its turn, or its retry wait
    RUNNING = "running"  # held by a worker: captioning
    COMPLETING = "completing"  # held: task_timing_v1's decision
    UPLOADING = "uploading"  # held: the result going to the domain and the webhook
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"  # held, and asked to stop
    CANCELLED = "cancelled"


FINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
# A worker holds the job under a lease (renew_lease, rescue_jobs).
HELD = frozenset({Status.RUNNING, Status.COMPLETING, Status.UPLOADING, Status.CANCELLING})


def status_to_proto(status: Status) -> jobs_pb2.JobStatus:
    return cast(jobs_pb2.JobStatus, jobs_pb2.JobStatus.Value(f"JOB_STATUS_{status.name}"))


def status_from_proto(value: int) -> Status | None:
    """None for JOB_STATUS_UNSPECIFIED (any status)."""
    if value == jobs_pb2.JOB_STATUS_UNSPECIFIED:
        return None
    try:
        return Status[jobs_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_")]
    except ValueError:
        raise BadInput(f"unknown status {value}; expected one of {', '.join(Status)}") from None
