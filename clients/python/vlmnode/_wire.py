"""What goes on the wire: requests built from Python values, responses turned
into typed results. `Client` and `AsyncClient` both call these, so the twins
differ only in how a call travels, never in what it says."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Union

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from vlmnode._errors import InvalidArgumentError, error_from_stream
from vlmnode._types import AnswerChunk, Frame, Job, JobError, Notice
from vlmnode.v1 import inference_pb2, jobs_pb2

# Lower-case status names in the order of the JobStatus enum.
STATUSES = tuple(
    name.removeprefix("JOB_STATUS_").lower() for name in jobs_pb2.JobStatus.keys() if name != "JOB_STATUS_UNSPECIFIED"
)
# Files a folder of frames is made of.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

FrameLike = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", Frame]
# What `infer` takes: a folder (or one image file), one image's bytes, or any
# iterable of images (a list of paths, a generator reading a camera, ...).
FrameSource = Union[str, "os.PathLike[str]", bytes, Iterable[FrameLike]]


# Jobs: requests.


def _struct(value: Mapping[str, Any] | None, what: str) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if value is None:
        return message
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        message.update(dict(value))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{what} is not JSON: {exc}") from None
    return message


def status_value(status: str | None) -> int:
    """The JobStatus number of a lower-case status name ("" or None: any)."""
    if not status:
        return jobs_pb2.JOB_STATUS_UNSPECIFIED
    if status not in STATUSES:
        raise InvalidArgumentError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    return jobs_pb2.JobStatus.Value("JOB_STATUS_" + status.upper())


def new_idempotency_key() -> str:
    """A key for one create: the same job however often the create is sent."""
    return str(uuid.uuid4())


def create_job_request(
    job_type: str,
    domain_id: str,
    input: Mapping[str, Any],
    query: Mapping[str, Any] | None,
    idempotency_key: str | None,
    priority: int,
    max_attempts: int,
) -> jobs_pb2.CreateJobRequest:
    """The request of one create; with no `idempotency_key`, a new one."""
    return jobs_pb2.CreateJobRequest(
        job_type=job_type,
        domain_id=domain_id,
        query=_struct({"ids": []} if query is None else query, "query"),
        input=_struct(input, "input"),
        idempotency_key=idempotency_key or new_idempotency_key(),
        priority=priority,
        max_attempts=max_attempts,
    )


def list_jobs_request(status: str | None, job_type: str | None, limit: int, offset: int) -> jobs_pb2.ListJobsRequest:
    return jobs_pb2.ListJobsRequest(
        status=status_value(status), job_type=job_type or "", limit=limit, offset=offset  # type: ignore[arg-type]
    )


def get_job_request(job_id: str) -> jobs_pb2.GetJobRequest:
    return jobs_pb2.GetJobRequest(id=job_id)


def retry_job_request(job_id: str, job_type: str, input: Mapping[str, Any]) -> jobs_pb2.RetryJobRequest:
    return jobs_pb2.RetryJobRequest(id=job_id, job_type=job_type, input=_struct(input, "input"))


def cancel_job_request(job_id: str) -> jobs_pb2.CancelJobRequest:
    return jobs_pb2.CancelJobRequest(id=job_id)


def watch_job_request(job_id: str) -> jobs_pb2.WatchJobRequest:
    return jobs_pb2.WatchJobRequest(id=job_id)


# Jobs: results.


def _time(message: jobs_pb2.Job, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _dict(message: jobs_pb2.Job, field: str) -> dict[str, Any] | None:
    # Numbers come back as floats: a Struct holds doubles.
    return json_format.MessageToDict(getattr(message, field)) if message.HasField(field) else None


def status_name(value: int) -> str:
    try:
        return jobs_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()
    except ValueError:
        return "unspecified"


def job(message: jobs_pb2.Job) -> Job:
    return Job(
        id=message.id,
        job_type=message.job_type,
        status=status_name(message.status),
        domain_id=message.domain_id,
        query=_dict(message, "query") or {},
        input=_dict(message, "input") or {},
        output=_dict(message, "output"),
        error=JobError(message.error.code, message.error.message) if message.HasField("error") else None,
        created_at=_time(message, "created_at"),
        updated_at=_time(message, "updated_at"),
        attempts=message.attempts,
        max_attempts=message.max_attempts,
        priority=message.priority,
        idempotency_key=message.idempotency_key,
        run_after=_time(message, "run_after"),
        worker_id=message.worker_id,
    )


# Realtime inference.


def stream_config(
    prompt: str,
    model: str,
    batch_size: int,
    num_predict: int,
    temperature: float | None,
    flush_after: float | None,
) -> inference_pb2.InferRequest:
    config = inference_pb2.StreamConfig(
        model=model,
        prompt=prompt,
        batch_size=batch_size,
        num_predict=num_predict,
        flush_after_seconds=flush_after or 0.0,
    )
    if temperature is not None:
        config.temperature = temperature
    return inference_pb2.InferRequest(config=config)


def folder_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The images of a folder (JPEG, PNG; hidden files left out) in name order."""
    path = Path(folder)
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the folder {folder}: {exc.strerror or exc}") from None
    return sorted(
        (p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name,
    )


def frame_items(frames: FrameSource) -> Iterable[FrameLike]:
    """The frames a source stands for: a folder's images, one file or one
    image's bytes, or the items of any other iterable, as they come."""
    if isinstance(frames, (bytes, bytearray, memoryview)):
        return [frames]
    if isinstance(frames, (str, os.PathLike)):
        return folder_images(frames) if Path(frames).is_dir() else [frames]
    return frames


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the frame {os.fspath(path)}: {exc.strerror or exc}") from None


def frame_request(item: FrameLike, position: int) -> inference_pb2.InferRequest:
    """The message for one frame; `position` counts frames from 1 and is the
    id of frames that have neither an id nor a file name."""
    captured_at = None
    image: bytes | bytearray | memoryview | str | os.PathLike[str]
    if isinstance(item, Frame):
        frame_id, image, captured_at = item.id, item.image, item.captured_at
    else:
        frame_id, image = "", item
    if isinstance(image, (str, os.PathLike)):
        frame_id = frame_id or Path(image).name
        data = _read(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        raise InvalidArgumentError(f"frame {position} is a {type(image).__name__}; expected bytes, a path or a Frame")
    message = inference_pb2.Frame(id=frame_id or str(position), image=data)
    if captured_at is not None:
        message.captured_at.FromDatetime(captured_at)
    return inference_pb2.InferRequest(frame=message)


def frame_requests(frames: FrameSource) -> Iterator[inference_pb2.InferRequest]:
    for position, item in enumerate(frame_items(frames), start=1):
        yield frame_request(item, position)


def infer_result(response: inference_pb2.InferResponse) -> AnswerChunk | Notice | None:
    kind = response.WhichOneof("message")
    if kind == "chunk":
        chunk = response.chunk
        return AnswerChunk(
            answer_id=chunk.answer_id,
            text=chunk.text,
            done=chunk.done,
            frame_ids=list(chunk.frame_ids),
            frames_dropped=chunk.frames_dropped,
        )
    if kind == "notice":
        return Notice(message=response.notice.message, frame_ids=list(response.notice.frame_ids))
    if kind == "error":  # the node's reason, sent just before it ends the stream
        raise error_from_stream(response.error.code, response.error.message)
    return None  # a kind newer than this client
