"""task_timing_v1 benchmark against the strict fake Ollama (one slot per model
unless told otherwise, a context window, front truncation).

1. Captioning in parallel: a 50-image job through the real worker with the
   fake and the node at 1 and at 4 slots a model, beside the same job captioned
   one image at a time, and the node asking 4 at once of an Ollama with 1 slot
   (the speed-up that existed only against the old, kind fake).
2. A long job: 500 images whose timeline overflows a 4096-token LLM context,
   a task planted in the middle. Wall time, windows, whether the task is found,
   beside the node's old way in the same run (instructions and task first, the
   whole timeline in one non-streamed request), which Ollama cuts from the front.

    python -m bench.task_timing [--images 50] [--latency 0.2] [--slots 4] [--long 500]

Prints figures and ratios; never fails.
"""

import argparse
import asyncio
import json
import logging
import time
import uuid

import ollama

from bench.database import fresh_store
from devpeers.fake_ollama import FakeOllama
from devpeers.fake_posemesh import FakePosemesh
from devpeers.images import solid_jpeg
from server.config import Settings
from server.peers import domain_client, engines
from server.store import JobStore
from worker.pipelines import Peers
from worker.runner import Worker

COLOURS = ["white", "red", "green", "blue", "yellow"]
TASK = "When was the red box on the shelf?"
# How the node asked before (worker/task_timing.py until this benchmark was written).
OLD_INSTRUCTIONS = (
    "Below is a timeline of photos taken by smart glasses in a store, one line per photo: "
    "`id,timestamp,event`, where event describes the photo. Using the task description, find the "
    "photo where the task started and the photo where it ended. Answer in JSON with `start` and `end` "
    "(each with image_id, timestamp, confidence between 0 and 1, reasoning; null when the task is not "
    "seen) and an overall `reasoning`."
)
OLD_MOMENT = {"type": ["object", "null"], "properties": {
    "image_id": {"type": "string"}, "timestamp": {"type": "string"},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1}, "reasoning": {"type": "string"}},
    "required": ["image_id", "timestamp", "confidence", "reasoning"]}
OLD_SCHEMA = {"type": "object", "properties": {"start": OLD_MOMENT, "end": OLD_MOMENT, "reasoning": {"type": "string"}},
              "required": ["start", "end", "reasoning"]}


async def run_job(store: JobStore, settings: Settings, domain_id: str) -> tuple[float, dict]:
    """Seconds from claim to completion of one job, and its output."""
    peers = Peers(settings=settings, engines=engines(settings), domain=domain_client(settings))
    worker = Worker(store, peers)
    task = asyncio.create_task(worker.run())
    job, _ = await store.create_job(
        job_type="task_timing_v1",
        domain_id=domain_id,
        query={"ids": []},
        input={"prompt": TASK, "vlm_prompt": "Describe the image"},
    )
    while (row := await store.get_job(job.id)).status not in ("completed", "failed"):
        await asyncio.sleep(0.01)
    worker.stop()
    await task
    await peers.engines.aclose()
    await peers.domain.aclose()
    assert row.status == "completed", row.error
    events = {e.status: e.at for e in await store.job_events(job.id)}
    return (events["completed"] - events["running"]).total_seconds(), row.output


def settings_for(store: JobStore, ollama: FakeOllama, posemesh: FakePosemesh, **kw) -> Settings:
    return Settings(
        postgres_url=store.url,
        ollama_host=ollama.url,
        api_url=posemesh.api_url,
        dds_url=posemesh.dds_url,
        posemesh_email=posemesh.email,
        posemesh_password=posemesh.password,
        **kw,
    )


def add_photos(posemesh: FakePosemesh, colours: list[str], size=(640, 480)) -> tuple[str, list[str]]:
    domain_id = posemesh.add_domain(str(uuid.uuid4()))
    ids = []
    for n, colour in enumerate(colours):
        stamp = f"20250810_{9 + n // 3600:02d}{n // 60 % 60:02d}{n % 60:02d}"
        ids.append(posemesh.add_item(domain_id, f"photo_{n}_{stamp}", solid_jpeg(colour, size=size)))
    posemesh.add_sensor_log(domain_id)
    posemesh.add_manifest(domain_id)
    return domain_id, ids


async def parallel_captions(args, store: JobStore, posemesh: FakePosemesh) -> None:
    domain_id, _ = add_photos(posemesh, [COLOURS[n % len(COLOURS)] for n in range(args.images)])
    runs = {}
    for label, fake_slots, node_slots, caption_slots in (
        ("one at a time", args.slots, args.slots, 1),
        ("Ollama 1 slot, node 1", 1, 1, 0),
        (f"Ollama {args.slots} slots, node {args.slots}", args.slots, args.slots, 0),
        (f"Ollama 1 slot, node {args.slots} (mismatched)", 1, args.slots, 0),
    ):
        with FakeOllama(latency=args.latency, num_parallel=fake_slots) as fake:
            settings = settings_for(store, fake, posemesh, ollama_num_parallel=node_slots, caption_slots=caption_slots)
            runs[label], _ = await run_job(store, settings, domain_id)
    sequential = runs["one at a time"]
    ideal = args.images * args.latency / args.slots + args.latency
    print(f"1. task_timing_v1, {args.images} images, {args.latency * 1000:.0f} ms per answer (strict fake Ollama):")
    for label, seconds in runs.items():
        print(f"  {label:<36} {seconds:6.2f} s   speed-up over one at a time {sequential / seconds:4.2f}x")
    parallel = runs[f"Ollama {args.slots} slots, node {args.slots}"]
    print(f"  {args.slots} slots against the ideal {ideal:.2f} s: ratio {parallel / ideal:.2f} (target <= 1.3)")


async def long_job(args, store: JobStore, posemesh: FakePosemesh) -> None:
    start, end = args.long * 2 // 5, args.long * 2 // 5 + args.long // 12
    colours = ["red" if start <= n <= end else "grey" for n in range(args.long)]
    domain_id, ids = add_photos(posemesh, colours, size=(320, 240))
    latency = 0.01
    with FakeOllama(latency=latency) as fake:
        settings = settings_for(store, fake, posemesh, llm_num_ctx=4096)
        seconds, output = await run_job(store, settings, domain_id)
        llm = [r for r in fake.requests if r["format"]]
        task = output["task"]
        found = (task["start"] or {}).get("image_id") == ids[start] and (task["end"] or {}).get("image_id") == ids[end]

        # The node's old way, against the same fake in the same run.
        fake.requests.clear()
        prompt = f"{OLD_INSTRUCTIONS}\n\nTask: {TASK}\n\nTimeline:\n{output['logs']}\n"
        began = time.perf_counter()
        async with ollama.AsyncClient(fake.url) as client:
            old = await client.generate(settings.llm_model, prompt, format=OLD_SCHEMA, stream=False)
        old_seconds = time.perf_counter() - began
        [old_request] = fake.requests
        answer = json.loads(old.response)
        old_found = (answer["start"] or {}).get("image_id") == ids[start] and (
            (answer["end"] or {}).get("image_id") == ids[end])

    print(f"2. a long job: {args.long} images, the task in photos {start}-{end}, LLM context 4096 tokens,"
          f" {latency * 1000:.0f} ms per answer:")
    print(f"  wall time {seconds:.2f} s; timeline read in {output['decision']['windows']} windows,"
          f" {output['decision']['llm_calls']} LLM questions; prompts cut by Ollama:"
          f" {sum(r['truncated'] for r in llm)} of {len(llm)}; task found: {'yes' if found else 'NO'}")
    print(f"  before (one prompt, task first): {old_seconds:.2f} s for the LLM step; the prompt took"
          f" {old_request['prompt_tokens']} tokens, Ollama kept {old_request['prompt_eval_count']}"
          f" ({'cut' if old_request['truncated'] else 'whole'}); task found: {'yes' if old_found else 'NO'}"
          f" (answered {(answer['start'] or {}).get('image_id', 'null')[:8]}..)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake Ollama takes per answer")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--long", type=int, default=500, help="images of the long job")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with FakePosemesh() as posemesh:
        async with fresh_store() as store:
            await parallel_captions(args, store, posemesh)
            await long_job(args, store, posemesh)


if __name__ == "__main__":
    asyncio.run(main())
