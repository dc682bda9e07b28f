"""A job's images, each captioned once: listed by their metadata, downloaded
by id in batches while the ones before are captioned, and each caption kept
as it is made, so a retried or rescued job resumes where it stopped.

Real domains hold more than photos (sensor logs, zipped scans, manifests,
some far larger than any photo): only the items the original node took for
images are downloaded, and an image too large to take is skipped unread.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Protocol

from server.domain import DataItem, capture_time, is_image, name_stamp, validate_query
from server.errors import BadInput
from server.images import MAX_BYTES, prepare
from server.jobs import Job
from server.store import Caption

if TYPE_CHECKING:  # worker.pipelines imports this module
    from worker.pipelines import Peers

log = logging.getLogger(__name__)

DOWNLOAD_BATCH_BYTES = 32 * 1024 * 1024  # bytes of images one download asks for (by their metadata)
DOWNLOAD_BATCH_ITEMS = 100  # ids one download asks for, as the domain server takes them
BATCHES_AHEAD = 1  # batches downloaded while the one before is captioned


class CaptionContext(Protocol):
    job: Job

    async def captions(self, recipe: str) -> dict[str, Caption]: ...

    async def save_caption(self, recipe: str, caption: Caption) -> None: ...


@dataclass(frozen=True)
class Row:
    """One image of the timeline."""

    caption: Caption

    @property
    def image_id(self) -> str:
        return self.caption.image_id

    @property
    def timestamp(self) -> str:
        return self.caption.taken_at.astimezone(UTC).isoformat().replace("+00:00", "Z")

    @property
    def original_timestamp(self) -> str:
        """The time as the original node wrote it in `logs` and in vlm_only's
        `timestamp`: the name's YYYYMMDD_HHMMSS stamp when the time came from
        it (the original read no other source), else `timestamp`."""
        stamp = name_stamp(self.caption.name)
        return stamp[0] if stamp and stamp[1] == self.caption.taken_at else self.timestamp

    def as_dict(self) -> dict[str, str]:
        c = self.caption
        return {"image_id": c.image_id, "name": c.name, "timestamp": self.timestamp, "caption": c.caption}


def recipe(model: str, prompt: str, *, max_tokens: int, max_side: int) -> str:
    """What makes a caption: a caption made another way is not reused."""
    made_by = json.dumps([model, prompt, max_tokens, max_side])
    return hashlib.sha256(made_by.encode()).hexdigest()[:32]


def _skip(item: DataItem, reason: str) -> dict[str, str]:
    log.warning("skipping image %s: %s", item.id, reason)
    return {"image_id": item.id, "name": item.name, "reason": reason}


def _batches(items: Sequence[DataItem]) -> list[list[DataItem]]:
    batches: list[list[DataItem]] = []
    size = 0
    for item in items:
        if not batches or len(batches[-1]) >= DOWNLOAD_BATCH_ITEMS or size + item.size > DOWNLOAD_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item.size
    return batches


async def caption_images(ctx: CaptionContext, peers: "Peers", prompt: str) -> tuple[list[Row], list[dict[str, str]]]:
    """The job's images captioned with `prompt`, in capture order, and the
    images skipped (unreadable, too large, gone), each with its reason."""
    settings, job, domain = peers.settings, ctx.job, peers.domain
    if domain is None:
        raise BadInput("posemesh is not configured on this worker", code="not_configured")
    listed = await domain.list_items(job.domain_id, validate_query(job.query))
    items = [item for item in listed if is_image(item)]
    if not items:
        raise BadInput("No data found: the query matches no images", code="no_images")
    if len(items) > settings.job_max_images:
        raise BadInput(f"the query matches {len(items)} images; a job takes at most {settings.job_max_images}")

    made_with = recipe(
        settings.vlm_model, prompt, max_tokens=settings.caption_max_tokens, max_side=settings.image_max_side
    )
    kept = await ctx.captions(made_with)
    done = {i.id: kept[i.id] for i in items if i.id in kept and kept[i.id].image_updated_at == i.updated_at}
    skipped = [_skip(i, f"larger than {MAX_BYTES} bytes") for i in items if i.id not in done and i.size > MAX_BYTES]
    todo = [i for i in items if i.id not in done and i.size <= MAX_BYTES]
    if done:
        log.info("job %s: %d of %d captions kept from before", job.id, len(done), len(items))

    slots = asyncio.Semaphore(settings.caption_concurrency)
    options = {"num_predict": settings.caption_max_tokens}

    async def caption(item: DataItem) -> None:
        async with slots:
            try:
                prepared = await prepare(
                    item.data or b"", max_side=settings.image_max_side, max_pixels=settings.image_max_pixels
                )
            except BadInput as exc:
                skipped.append(_skip(item, exc.message))
                return
            text = await peers.engines.vlm.caption(prepared.jpeg, prompt, options=options)
        # One line (a timeline row), without the NULs PostgreSQL cannot store.
        caption = " ".join(text.replace("\x00", "").split())
        made = Caption(item.id, item.updated_at, item.name, capture_time(item, prepared.taken_at), caption)
        await ctx.save_caption(made_with, made)
        done[item.id] = made

    downloads: asyncio.Queue[list[DataItem] | None] = asyncio.Queue(maxsize=BATCHES_AHEAD)

    async def download() -> None:
        for batch in _batches(todo):
            got = {i.id: i for i in await domain.download_ids(job.domain_id, [i.id for i in batch])}
            skipped.extend(_skip(i, "no longer in the domain") for i in batch if i.id not in got)
            await downloads.put([got[i.id] for i in batch if i.id in got])
        await downloads.put(None)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(download())
            running: set[asyncio.Task] = set()
            while (batch := await downloads.get()) is not None:
                running |= {tasks.create_task(caption(item)) for item in batch}
                # Take the next batch once this one is nearly done: the slots
                # stay busy, and no more than a batch or two is held in memory.
                while len(running) > settings.caption_concurrency:
                    _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first failure says why; the rest followed from it

    rows = sorted((Row(c) for c in done.values()), key=lambda r: (r.caption.taken_at, r.caption.name))
    if not rows:
        raise BadInput(f"none of the {len(items)} images could be read ({skipped[0]['reason']})", code="no_images")
    return rows, skipped
