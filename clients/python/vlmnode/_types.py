"""The typed results a client hands back: plain dataclasses, no protobuf."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Statuses after which a job no longer changes by itself.
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable code and a readable message."""

    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """A batch job as the node stores it. `status` is lower case ("pending",
    "running", "completing", "uploading", "completed", "failed",
    "cancelling", "cancelled"); times are timezone-aware UTC datetimes."""

    id: str
    job_type: str
    status: str
    domain_id: str
    query: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: JobError | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    attempts: int = 0
    max_attempts: int = 0
    priority: int = 0
    idempotency_key: str = ""
    run_after: datetime | None = None
    worker_id: str = ""

    @property
    def finished(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values (times as ISO 8601 strings)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


@dataclass(frozen=True)
class Frame:
    """One image to send to `infer`: JPEG or PNG bytes, or a file path to read
    them from. `id` is echoed in the answers (default: the file name, or the
    frame's position in the stream counted from 1)."""

    image: bytes | str | os.PathLike[str]
    id: str = ""
    captured_at: datetime | None = None


@dataclass(frozen=True)
class AnswerChunk:
    """A piece of one answer; the last piece of each answer has `done` set,
    and says which frames the answer is about and how many frames the node
    has dropped on this stream so far because the model was busy."""

    answer_id: int
    text: str
    done: bool
    frame_ids: list[str] = field(default_factory=list)
    frames_dropped: int = 0


@dataclass(frozen=True)
class Notice:
    """Something the node says that is not an answer, such as frames that
    arrived before any prompt."""

    message: str
    frame_ids: list[str] = field(default_factory=list)
