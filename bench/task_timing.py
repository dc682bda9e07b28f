"""task_timing_v1 benchmark: one 50-image job through the real worker against
the fake Ollama (200 ms per answer) and fake posemesh, with 4 caption slots,
beside the same job captioned one image at a time.

    python -m bench.task_timing [--images 50] [--latency 0.2] [--slots 4]

Prints figures and ratios; never fails.
"""

import argparse
import asyncio
import logging
import time
import uuid

from bench.database import fresh_store
from server.config import Settings
from server.peers import domain_client, ollama_engine
from server.store import JobStore
from tests.images import solid_jpeg
from tests.peers.fake_ollama import FakeOllama
from tests.peers.fake_posemesh import FakePosemesh
from worker.pipelines import Peers
from worker.runner import Worker

COLOURS = ["white", "red", "green", "blue", "yellow"]


async def run_job(store: JobStore, settings: Settings, domain_id: str) -> float:
    """Seconds from claim to completion of one job."""
    peers = Peers(settings=settings, engine=ollama_engine(settings), domain=domain_client(settings))
    worker = Worker(store, peers)
    task = asyncio.create_task(worker.run())
    job, _ = await store.create_job(
        job_type="task_timing_v1",
        domain_id=domain_id,
        query={"ids": []},
        input={"prompt": "When was the red box on the shelf?", "vlm_prompt": "Describe the image"},
    )
    while (row := await store.get_job(job["id"]))["status"] not in ("completed", "failed"):
        await asyncio.sleep(0.01)
    worker.stop()
    await task
    await peers.engine.aclose()
    await peers.domain.aclose()
    assert row["status"] == "completed", row["error"]
    events = {e["status"]: e["at"] for e in await store.job_events(job["id"])}
    return (events["completed"] - events["running"]).total_seconds()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake Ollama takes per answer")
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    domain_id = str(uuid.uuid4())
    with FakeOllama(latency=args.latency) as ollama, FakePosemesh() as posemesh:
        posemesh.add_domain(domain_id)
        for n in range(args.images):
            stamp = f"20250810_16{n // 60:02d}{n % 60:02d}"
            posemesh.add_item(domain_id, f"photo_{n}_{stamp}", solid_jpeg(COLOURS[n % len(COLOURS)], size=(640, 480)))
        async with fresh_store() as store:
            base = Settings(
                postgres_url=store.url,
                ollama_host=ollama.url,
                api_url=posemesh.api_url,
                dds_url=posemesh.dds_url,
                posemesh_email=posemesh.email,
                posemesh_password=posemesh.password,
                ollama_concurrency=args.slots,
            )
            start = time.perf_counter()
            parallel = await run_job(store, Settings(**{**base.__dict__, "caption_slots": args.slots}), domain_id)
            sequential = await run_job(store, Settings(**{**base.__dict__, "caption_slots": 1}), domain_id)
            elapsed = time.perf_counter() - start

    llm = args.latency  # the fake answers the LLM with the same latency
    ideal = args.images * args.latency / args.slots + llm
    print(f"task_timing_v1, {args.images} images, {args.latency * 1000:.0f} ms per caption, {args.slots} slots:")
    print(f"  wall time:  {parallel:6.2f} s   ideal {ideal:.2f} s   ratio {parallel / ideal:.2f} (target <= 1.3)")
    print(f"  sequential: {sequential:6.2f} s   speed-up {sequential / parallel:.2f}x")
    print(f"  (both runs took {elapsed:.1f} s in all)")


if __name__ == "__main__":
    asyncio.run(main())
