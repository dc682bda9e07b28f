"""Faults, with nothing lost: peers that fail in every way end in a failed
job with a clear code after retries, never a stuck one; a database restart
and a server's SIGTERM lose nothing."""

import asyncio
import dataclasses
import signal
import sys
import uuid

import grpc
import psycopg
import pytest

from devpeers.images import solid_jpeg
from devpeers.ports import free_port
from server.embedded_postgres import EmbeddedPostgres, with_database
from server.store import JobStore
from tests.fixtures import (
    INPUT,
    create_request,
    running_worker,
    settings_env,
    start_worker,
    struct,
    wait_final,
    wait_for,
)
from vlmnode.v1 import inference_pb2 as pb
from vlmnode.v1 import inference_pb2_grpc, jobs_pb2, jobs_pb2_grpc

FAULTS = {
    # name: (how to break the peer, the job's error code, words in its message)
    "ollama answers garbage": (lambda o, p: setattr(o, "mode", "garbage"), "bad_model_answer", "Ollama"),
    "ollama hangs": (lambda o, p: setattr(o, "mode", "hang"), "peer_unavailable", "nothing heard for 0.5 s"),
    "ollama errors": (lambda o, p: setattr(o, "mode", "error"), "peer_unavailable", "Ollama"),
    "posemesh 5xx": (lambda o, p: p.fail_next(100, status=503, server="domain"), "peer_unavailable", "domain server"),
    "posemesh hangs": (lambda o, p: setattr(p, "mode", "hang"), "peer_unavailable", "domain server"),
    "broken multipart": (lambda o, p: setattr(p, "mode", "broken_multipart"), "peer_unavailable", "broken multipart"),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_failing_peer_ends_in_a_failed_job(fault, settings, jobs, fake_ollama, posemesh):
    breaks, code, words = FAULTS[fault]
    job = (await jobs.CreateJob(create_request(max_attempts=2))).job  # created while the peers are well
    breaks(fake_ollama, posemesh)
    settings = dataclasses.replace(settings, ollama_timeout=0.5, posemesh_timeout=0.5)
    async with running_worker(settings):
        done = await wait_final(jobs, job.id, timeout=30)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.attempts == 2, "a transient failure is retried"
    assert done.error.code == code and words in done.error.message, done.error


@pytest.fixture
def own_postgres():
    """A private server this test may restart."""
    pg = EmbeddedPostgres(fast=True)
    url = pg.start()
    name = f"vlmnode_faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg, with_database(url, name)
    pg.stop()


async def test_postgres_restart_loses_nothing(own_postgres, settings, fake_ollama):
    pg, url = own_postgres
    fake_ollama.latency = 0.3
    grpc_port = free_port()
    settings = dataclasses.replace(settings, postgres_url=url, job_lease=2.0)
    env = settings_env(settings, GRPC_PORT=grpc_port)
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "server.main", env=env)
    workers = [start_worker(settings) for _ in range(2)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            jobs = jobs_pb2_grpc.JobServiceStub(channel)
            request = create_request(job_type="vlm_only", input=struct({"vlm_prompt": "What colour?"}))
            ids = [(await jobs.CreateJob(request, wait_for_ready=True)).job.id for _ in range(8)]

            async def some_running():
                listed = (await jobs.ListJobs(jobs_pb2.ListJobsRequest(status=jobs_pb2.JOB_STATUS_RUNNING))).jobs
                return len(listed) > 0

            await wait_for(some_running)
            await asyncio.to_thread(pg.restart)

            async def all_final():
                try:
                    listed = (await jobs.ListJobs(jobs_pb2.ListJobsRequest(limit=100))).jobs
                except grpc.aio.AioRpcError:
                    return False  # the server is reconnecting
                return len(listed) == 8 and all(j.status == jobs_pb2.JOB_STATUS_COMPLETED for j in listed)

            await wait_for(all_final, timeout=60, every=0.2)
        store = JobStore(url, max_size=1)
        await store.open()
        assert await store.count_by_status() == {"completed": 8}
        for job_id in ids:
            statuses = [e.status for e in await store.job_events(uuid.UUID(job_id))]
            assert statuses.count("completed") == 1, statuses
        await store.close()
    finally:
        for w in workers:
            w.terminate()
        server.terminate()
        await server.wait()
        for w in workers:
            await asyncio.to_thread(w.wait, 30)


async def test_sigterm_lets_a_stream_finish_its_answer(settings, fake_ollama):
    fake_ollama.token_delay = 0.2
    grpc_port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.main", env=settings_env(settings, GRPC_PORT=grpc_port)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            call = inference_pb2_grpc.InferenceServiceStub(channel).Infer()
            await call.write(pb.InferRequest(config=pb.StreamConfig(prompt="What colour?", batch_size=1)))
            await call.write(pb.InferRequest(frame=pb.Frame(image=solid_jpeg("red"))))
            text = (await call.read()).chunk.text
            server.send_signal(signal.SIGTERM)
            await call.done_writing()
            while not (response := await call.read()).chunk.done:
                text += response.chunk.text
            assert text + response.chunk.text == "a 64x48 image, mostly red"
            assert await call.read() is grpc.aio.EOF and await call.code() == grpc.StatusCode.OK
        assert await asyncio.wait_for(server.wait(), 20) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def test_a_repeated_webhook_keeps_its_idempotency_key(settings, jobs, webhook, fake_ollama, processes):
    webhook.mode = "hang"  # the first worker dies while delivering
    first = start_worker(settings, JOB_LEASE=1)
    processes.append(first)
    job = (await jobs.CreateJob(create_request(input=struct({**INPUT, "webhook_url": webhook.url})))).job

    async def delivering():
        current = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job
        return current.status == jobs_pb2.JOB_STATUS_UPLOADING

    await wait_for(delivering)
    await asyncio.sleep(0.3)  # the request reaches the receiver, which holds it
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    webhook.mode = "ok"
    processes.append(start_worker(settings, JOB_LEASE=1))
    done = await wait_final(jobs, job.id, timeout=30)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED and done.attempts == 2
    webhook.wait_for(2)  # the held request of the dead worker, and the second worker's
    keys = {a.headers["idempotency-key"] for a in webhook.attempts}
    assert keys == {job.id}, "every delivery of the job carries the same key, so a receiver can drop repeats"
