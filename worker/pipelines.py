"""The job pipelines: task_timing_v1 and vlm_only, as DESIGN.md describes.

A pipeline reads its job, talks to the peers through their modules, moves the
job through its stages with `ctx.advance`, and returns the job's output or
raises a NodeError saying why not.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from server.config import Settings
from server.domain import DomainClient
from server.job_status import Status
from server.jobs import TASK_TIMING, VLM_ONLY, JobInput
from server.pool import Engines
from worker.captions import CaptionContext, caption_images
from worker.task_timing import decide, reply, task_output, timeline_csv


class JobContext(CaptionContext, Protocol):
    async def advance(self, status: Status) -> None: ...


@dataclass
class Peers:
    settings: Settings
    engines: Engines
    domain: DomainClient | None


async def run_vlm_only(ctx: JobContext, peers: Peers, data: JobInput) -> dict[str, Any]:
    rows, skipped = await caption_images(ctx, peers, data.vlm_prompt)
    responses = [
        # `timestamp` as the original wrote it; `taken_at` always ISO 8601.
        {"image_id": r.image_id, "timestamp": r.original_timestamp, "response": r.caption.caption, "taken_at": r.timestamp}
        for r in rows
    ]
    return {"responses": responses, "skipped": skipped}


async def run_task_timing(ctx: JobContext, peers: Peers, data: JobInput) -> dict[str, Any]:
    rows, skipped = await caption_images(ctx, peers, data.vlm_prompt)
    await ctx.advance(Status.COMPLETING)
    decision = await decide(rows, data.prompt, peers.engines.llm, peers.settings.llm_model)
    return {
        "logs": timeline_csv(rows),
        "temporal_output": reply(decision.verdict, rows),
        "task": task_output(decision.verdict, rows),
        "timeline": [row.as_dict() for row in rows],
        "skipped": skipped,
        "decision": {"windows": decision.windows, "llm_calls": decision.calls},
    }


Pipeline = Callable[[JobContext, Peers, JobInput], Awaitable[dict[str, Any]]]
PIPELINES: dict[str, Pipeline] = {TASK_TIMING: run_task_timing, VLM_ONLY: run_vlm_only}


async def run_job(ctx: JobContext, peers: Peers, pipelines: dict[str, Pipeline] = PIPELINES) -> dict[str, Any]:
    """The job's pipeline: the one its input's `job_type` names, as the
    original worker chose it, else the job's own type."""
    data = ctx.job.validated_input
    return await pipelines[data.pipeline](ctx, peers, data)
