"""The job pipelines: task_timing_v1 and vlm_only, as DESIGN.md describes.

A pipeline reads its job, talks to the peers through their modules, moves the
job through its stages with `ctx.advance`, and returns the job's output or
raises a NodeError saying why not.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Protocol

from server.config import Settings
from server.domain import DataItem, DomainClient, capture_time, images_only, validate_query
from server.engine import OllamaEngine
from server.errors import BadInput, NodeError, PeerUnavailable
from server.images import PreparedImage, prepare_image
from server.jobs import TASK_TIMING, VLM_ONLY, validate_input
from worker.task_timing import ANSWER_SCHEMA, check_answer, llm_prompt, timeline_csv

log = logging.getLogger(__name__)

LLM_TRIES = 2  # asks of the LLM before an answer that does not fit counts as a failure


class JobContext(Protocol):
    job: dict[str, Any]

    async def advance(self, status: str) -> None: ...


@dataclass
class Peers:
    settings: Settings
    engine: OllamaEngine
    domain: DomainClient | None


@dataclass(frozen=True)
class Image:
    item: DataItem
    prepared: PreparedImage
    taken_at: datetime

    @property
    def timestamp(self) -> str:
        return self.taken_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


async def load_images(job: dict[str, Any], peers: Peers) -> tuple[list[Image], list[dict[str, str]]]:
    """The job's images, prepared for the model and in capture order, and the
    items that could not be read."""
    if peers.domain is None:
        raise BadInput("posemesh is not configured on this worker", code="not_configured")
    items = images_only(await peers.domain.download(job["domain_id"], validate_query(job["query"])))
    if not items:
        raise BadInput("No data found: the query matches no images", code="no_images")
    if len(items) > peers.settings.job_max_images:
        raise BadInput(f"the query matches {len(items)} images; a job takes at most {peers.settings.job_max_images}")

    async def prepare(item: DataItem) -> Image | dict[str, str]:
        try:
            prepared = await asyncio.to_thread(prepare_image, item.data or b"", max_side=peers.settings.image_max_side)
        except BadInput as exc:
            return {"image_id": item.id, "name": item.name, "reason": exc.message}
        return Image(item, prepared, capture_time(item, prepared.taken_at))

    results = await asyncio.gather(*(prepare(item) for item in items))
    images = sorted((r for r in results if isinstance(r, Image)), key=lambda i: (i.taken_at, i.item.name))
    skipped = [r for r in results if isinstance(r, dict)]
    for s in skipped:
        log.warning("job %s: skipping image %s: %s", job["id"], s["image_id"], s["reason"])
    if not images:
        raise BadInput(f"none of the {len(items)} images could be read ({skipped[0]['reason']})", code="no_images")
    return images, skipped


async def caption_all(images: list[Image], prompt: str, peers: Peers) -> list[dict[str, Any]]:
    """One caption per image, as many at a time as the slots allow, in order."""
    slots = asyncio.Semaphore(peers.settings.caption_slots)

    async def caption(image: Image) -> dict[str, Any]:
        async with slots:
            text = await peers.engine.caption(image.prepared.jpeg, prompt)
        return {"image_id": image.item.id, "name": image.item.name, "timestamp": image.timestamp, "caption": text.strip()}

    return list(await asyncio.gather(*(caption(image) for image in images)))


async def run_vlm_only(ctx: JobContext, peers: Peers) -> dict[str, Any]:
    data = validate_input(VLM_ONLY, ctx.job["input"])
    images, skipped = await load_images(ctx.job, peers)
    rows = await caption_all(images, data.vlm_prompt, peers)
    responses = [{"image_id": r["image_id"], "timestamp": r["timestamp"], "response": r["caption"]} for r in rows]
    return {"responses": responses, "skipped": skipped}


async def run_task_timing(ctx: JobContext, peers: Peers) -> dict[str, Any]:
    data = validate_input(TASK_TIMING, ctx.job["input"])
    images, skipped = await load_images(ctx.job, peers)
    rows = await caption_all(images, data.vlm_prompt, peers)
    await ctx.advance("completing")
    logs = timeline_csv(rows)
    prompt = llm_prompt(data.prompt, logs)
    error: NodeError | None = None
    for _ in range(LLM_TRIES):
        answer = await peers.engine.complete_json(prompt, ANSWER_SCHEMA, model=peers.settings.llm_model)
        try:
            task = check_answer(answer, rows)
            break
        except PeerUnavailable as exc:
            error = exc
            log.warning("job %s: %s; asking again", ctx.job["id"], exc.message)
    else:
        assert error is not None
        raise error
    return {
        "logs": logs,
        "temporal_output": answer,
        "task": task,
        "timeline": rows,
        "skipped": skipped,
    }


Pipeline = Callable[[JobContext, Peers], Awaitable[dict[str, Any]]]
PIPELINES: dict[str, Pipeline] = {TASK_TIMING: run_task_timing, VLM_ONLY: run_vlm_only}
