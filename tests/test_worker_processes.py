"""Workers as real processes: killed mid-job, stopped with SIGTERM, and
several sharing one queue."""

import asyncio
import signal
import subprocess
import sys
import uuid

from server.store import JobStore
from tests.fixtures import INPUT, create_request, settings_env, start_worker, struct, wait_final, wait_for
from vlmnode.v1 import jobs_pb2
from worker.captions import recipe


async def _at_least(n: int, captions):
    found = await captions
    return found if len(found) >= n else None


async def test_worker_killed_mid_job_is_replaced_and_the_job_completes_once(
    settings, jobs, webhook, fake_ollama, processes
):
    fake_ollama.latency = 0.4
    first = start_worker(settings, JOB_LEASE=1)
    processes.append(first)
    job = (await jobs.CreateJob(create_request(input=struct({**INPUT, "webhook_url": webhook.url})))).job

    async def captioning():
        current = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job
        return current.status == jobs_pb2.JOB_STATUS_RUNNING and fake_ollama.in_flight > 0 and current

    held = await wait_for(captioning)
    store = JobStore(settings.postgres_url, max_size=1)
    await store.open()
    made_with = recipe(settings.vlm_model, INPUT["vlm_prompt"], max_tokens=settings.caption_max_tokens,
                       max_side=settings.image_max_side)
    kept = await wait_for(lambda: _at_least(2, store.captions(uuid.UUID(job.id), made_with)))
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    processes.append(start_worker(settings, JOB_LEASE=1))
    done = await wait_final(jobs, job.id, timeout=30)
    # The second worker took up the captions the first had kept: of the six
    # photos, at most the one in hand when it died was captioned twice.
    captioned = [r for r in fake_ollama.requests if r["images"]]
    assert 6 <= len(captioned) <= 6 + 1 and len(kept) >= 2

    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert done.attempts == 2 and done.worker_id == ""
    events = await store.job_events(uuid.UUID(job.id))
    await store.close()
    statuses = [e.status for e in events]
    assert statuses.count("running") == 2 and statuses.count("completed") == 1
    assert events[statuses.index("running") + 1].error["code"] == "lease_expired"
    assert held.worker_id
    await asyncio.sleep(0.5)
    assert len(webhook.deliveries) == 1


async def test_sigterm_lets_the_current_job_finish(settings, jobs, fake_ollama, processes):
    fake_ollama.latency = 0.3
    worker = start_worker(settings)
    processes.append(worker)
    job = (await jobs.CreateJob(create_request())).job

    async def running():
        current = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job
        return current.status == jobs_pb2.JOB_STATUS_RUNNING and fake_ollama.in_flight > 0

    await wait_for(running)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 0
    done = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED


async def test_two_workers_share_the_queue_without_doubling(settings, jobs, processes, posemesh):
    processes.extend(start_worker(settings) for _ in range(2))
    request = create_request(job_type="vlm_only", input=struct({"vlm_prompt": "What colour?"}))
    ids = [(await jobs.CreateJob(request)).job.id for _ in range(12)]
    finished = [await wait_final(jobs, job_id, timeout=40) for job_id in ids]
    assert all(j.status == jobs_pb2.JOB_STATUS_COMPLETED for j in finished)
    assert all(j.attempts == 1 for j in finished)


async def test_a_vlm_that_cannot_see_stops_the_worker_with_one_line(settings, processes):
    worker = subprocess.Popen([sys.executable, "-m", "worker.main"], stderr=subprocess.PIPE,
                              env=settings_env(settings, VLM_MODEL="llama3:latest"))
    processes.append(worker)
    _, stderr = await asyncio.to_thread(worker.communicate, None, 30)
    said = stderr.decode()
    assert worker.returncode == 1 and "Traceback" not in said
    assert said.strip().splitlines()[-1].startswith(
        "vlm-node-worker: VLM_MODEL llama3:latest cannot see images: Ollama at "
    )
