"""The job pipelines: task_timing_v1 and vlm_only, as DESIGN.md describes.

A pipeline reads its job, talks to the peers through their modules, moves the
job through its stages with `ctx.advance`, and returns the job's output or
raises a NodeError saying why not.
"""

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from server.config import Settings
from server.domain import DomainClient
from server.engine import OllamaEngine
from server.jobs import TASK_TIMING, VLM_ONLY, validate_input
from worker.captions import CaptionContext, caption_images
from worker.task_timing import decide, task_output, timeline_csv


class JobContext(CaptionContext, Protocol):
    async def advance(self, status: str) -> None: ...


@dataclass
class Peers:
    settings: Settings
    engine: OllamaEngine
    domain: DomainClient | None


async def run_vlm_only(ctx: JobContext, peers: Peers) -> dict[str, Any]:
    data = validate_input(VLM_ONLY, ctx.job["input"])
    rows, skipped = await caption_images(ctx, peers, data.vlm_prompt)
    responses = [{"image_id": r.image_id, "timestamp": r.timestamp, "response": r.caption.caption} for r in rows]
    return {"responses": responses, "skipped": skipped}


async def run_task_timing(ctx: JobContext, peers: Peers) -> dict[str, Any]:
    data = validate_input(TASK_TIMING, ctx.job["input"])
    rows, skipped = await caption_images(ctx, peers, data.vlm_prompt)
    await ctx.advance("completing")
    decision = await decide(rows, data.prompt, peers.engine, peers.settings.llm_model)
    task = task_output(decision.verdict, rows)
    return {
        "logs": timeline_csv(rows),
        "temporal_output": task,
        "task": task,
        "timeline": [row.as_dict() for row in rows],
        "skipped": skipped,
        "decision": {"windows": decision.windows, "llm_calls": decision.calls},
    }


Pipeline = Callable[[JobContext, Peers], Awaitable[dict[str, Any]]]
PIPELINES: dict[str, Pipeline] = {TASK_TIMING: run_task_timing, VLM_ONLY: run_vlm_only}
