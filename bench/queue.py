"""Queue benchmark: pickup latency from CreateJob to claim, and claim+complete
throughput of empty jobs, for the real worker (LISTEN/NOTIFY wake-up) beside
the original's way (poll every 2 s), against the same PostgreSQL.

    python -m bench.queue [--jobs 200] [--burst 3000]

(run as a module: a script named queue.py would shadow the standard library's)

Prints figures and ratios; never fails.
"""

import argparse
import asyncio
import logging
import time

from bench.database import fresh_store, percentile
from server.config import Settings
from server.store import JobStore
from worker.pipelines import Peers
from worker.runner import Worker

JOB_TYPE = "vlm_only"  # run by an empty pipeline: the queue alone is measured
ORIGINAL_POLL = 2.0  # seconds: how often the original worker looked for jobs


async def empty_pipeline(ctx, peers, data) -> dict:
    return {}


async def create(store: JobStore, n: int, spacing: float) -> None:
    for _ in range(n):
        await store.create_job(job_type=JOB_TYPE, domain_id="", query={}, input={"vlm_prompt": "-"})
        if spacing:
            await asyncio.sleep(spacing)


async def pickups(store: JobStore) -> list[float]:
    """Seconds from creation to claim, from the store's own clock."""
    out = []
    for job in await store.list_jobs(limit=1000, job_type=JOB_TYPE):
        events = await store.job_events(job.id)
        running = next(e.at for e in events if e.status == "running")
        out.append((running - job.created_at).total_seconds())
    return out


async def wait_done(store: JobStore, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (await store.count_by_status()).get("completed", 0) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def with_worker(store: JobStore, worker_jobs: int, body):
    settings = Settings(postgres_url=store.url, worker_jobs=worker_jobs, job_lease=30)
    peers = Peers(settings=settings, engines=None, domain=None)  # empty jobs use no peer
    worker = Worker(store, peers, pipelines={JOB_TYPE: empty_pipeline})
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)  # listening
    try:
        return await body()
    finally:
        worker.stop()
        await task


async def polling_worker(store: JobStore, stop: asyncio.Event) -> None:
    """The baseline: look for work every 2 s, run what is there, sleep."""
    while not stop.is_set():
        while claim := await store.claim_job("poller", [JOB_TYPE], 30):
            await store.finish_job(claim, "completed", output={})
        try:
            await asyncio.wait_for(stop.wait(), ORIGINAL_POLL)
        except TimeoutError:
            pass


async def bench_pickup(n: int) -> tuple[list[float], list[float]]:
    async with fresh_store() as store:
        async def run():
            await create(store, n, spacing=0.01)
            await wait_done(store, n)
            return await pickups(store)

        ours = await with_worker(store, 1, run)
    async with fresh_store() as store:
        stop = asyncio.Event()
        poller = asyncio.create_task(polling_worker(store, stop))
        await create(store, n // 4, spacing=0.08)  # spread over a few polls
        await wait_done(store, n // 4)
        stop.set()
        await poller
        baseline = await pickups(store)
    return ours, baseline


async def bench_throughput(n: int) -> tuple[float, float]:
    async with fresh_store(max_size=20) as store:
        await create(store, n, spacing=0)

        async def run():
            start = time.perf_counter()
            await wait_done(store, n)
            return n / (time.perf_counter() - start)

        ours = await with_worker(store, 16, run)
    async with fresh_store() as store:
        await create(store, n, spacing=0)
        stop = asyncio.Event()
        start = time.perf_counter()
        poller = asyncio.create_task(polling_worker(store, stop))
        await wait_done(store, n)
        baseline = n / (time.perf_counter() - start)
        stop.set()
        await poller
    return ours, baseline


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200, help="jobs for the pickup latency")
    parser.add_argument("--burst", type=int, default=3000, help="jobs for the throughput")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    ours, baseline = await bench_pickup(args.jobs)
    print(f"pickup latency, CreateJob to claim ({len(ours)} jobs, LISTEN/NOTIFY vs {ORIGINAL_POLL:.0f} s polling):")
    for p in (50, 99):
        a, b = percentile(ours, p) * 1000, percentile(baseline, p) * 1000
        print(f"  p{p}: {a:8.2f} ms   baseline {b:8.1f} ms   ({b / a:6.0f}x faster)")
    print("  target: p50 <= 20 ms")

    rate, base_rate = await bench_throughput(args.burst)
    print(f"claim+complete throughput, empty jobs ({args.burst} queued, one worker process):")
    print(f"  worker: {rate:8.0f} jobs/s   baseline poller: {base_rate:8.0f} jobs/s   (ratio {rate / base_rate:.2f})")
    print("  target: >= 1000 jobs/s on 2 cores")


if __name__ == "__main__":
    asyncio.run(main())
