"""The job database going away and coming back, through a TCP proxy in front
of PostgreSQL that a test cuts (new connections refused, open ones reset)
and restores: calls are answered UNAVAILABLE at once rather than left
waiting, /ready says so and recovers as soon as the database answers, and
watches opened before the outage ride it out and deliver the job's state
after it."""

import asyncio
import dataclasses
import json
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import pytest
from grpc_health.v1 import health

from devpeers.ports import free_port
from devpeers.tcp_proxy import CuttableProxy
from server import job_service
from server.errors import DATABASE_UNAVAILABLE, DatabaseUnavailable
from server.health_monitor import HealthMonitor
from server.job_service import JobService
from server.job_watcher import JobWatcher
from server.store import JOB_EVENTS_CHANNEL, JobStore
from tests.fixtures import create_request, settings_env, start_worker, struct, wait_for
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

BOUND = 5.0  # seconds: a generous bound on "at once", never a measured figure


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


@pytest.fixture
async def proxy(database_url):
    parts = urlsplit(database_url)
    p = CuttableProxy(parts.hostname, parts.port or 5432)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def proxied_url(database_url, proxy):
    return through(database_url, proxy.port)


@dataclasses.dataclass
class Node:
    jobs: jobs_pb2_grpc.JobServiceStub
    http: httpx.AsyncClient
    env: dict
    procs: dict


async def start_server(env: dict) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "server.main", env=env)


@pytest.fixture
async def node_processes(settings, proxied_url):
    """The gRPC server and the bridge as their own processes, the server's
    database behind the proxy."""
    grpc_port, http_port = free_port(), free_port()
    env = settings_env(dataclasses.replace(settings, postgres_url=proxied_url), GRPC_PORT=grpc_port,
                       HTTP_HOST="127.0.0.1", HTTP_PORT=http_port, GRPC_TARGET=f"127.0.0.1:{grpc_port}")
    procs = {
        "server": await start_server(env),
        "bridge": await asyncio.create_subprocess_exec(sys.executable, "-m", "server.bridge.main", env=env),
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", trust_env=False, timeout=15) as http:
            await asyncio.wait_for(channel.channel_ready(), 30)

            async def bridge_ready():
                try:
                    return (await http.get("/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(bridge_ready, timeout=30)
            yield Node(jobs_pb2_grpc.JobServiceStub(channel), http, env, procs)
    finally:
        for p in procs.values():
            if p.returncode is None:
                p.terminate()
        for p in procs.values():
            try:
                await asyncio.wait_for(p.wait(), 20)
            except TimeoutError:
                p.kill()
                await p.wait()


async def ready_status(http: httpx.AsyncClient) -> tuple[int, dict]:
    response = await http.get("/ready")
    return response.status_code, response.json()["checks"]


async def expect_unavailable(call) -> None:
    """The call is answered UNAVAILABLE, and not left waiting."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call, BOUND)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    assert info.value.details() == DATABASE_UNAVAILABLE


async def test_calls_fail_fast_while_the_database_is_down_and_recover_at_once(node_processes, proxy):
    jobs, http = node_processes.jobs, node_processes.http
    job = (await jobs.CreateJob(create_request())).job
    assert await ready_status(http) == (200, {"grpc": "serving", "postgres": "serving", "ollama": "serving"})

    await proxy.cut()
    # The first call may meet the outage before the node knows of it: it is
    # answered all the same, rather than waiting for a connection.
    await expect_unavailable(jobs.ListJobs(jobs_pb2.ListJobsRequest()))

    async def not_ready():
        status, checks = await ready_status(http)
        return status == 503 and checks == {"grpc": "serving", "postgres": "not_serving", "ollama": "serving"}

    await wait_for(not_ready, timeout=BOUND)
    # Known down: every call is answered at once, over gRPC and over HTTP.
    for _ in range(3):
        await expect_unavailable(jobs.ListJobs(jobs_pb2.ListJobsRequest()))
    await expect_unavailable(jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id)))
    await expect_unavailable(jobs.CreateJob(create_request()))
    # A new watch too: it has nothing to send.
    await expect_unavailable(anext(aiter(jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id)))))
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{job.id}", f"/api/v1/jobs/{job.id}/events"):
        response = await asyncio.wait_for(http.get(path), BOUND)
        assert response.status_code == 503, (path, response.text)
        assert response.json() == {"error": DATABASE_UNAVAILABLE}

    await proxy.restore()

    async def ready():
        return (await ready_status(http))[0] == 200

    await wait_for(ready, timeout=BOUND)
    # Ready means ready: the calls work again from the first one on.
    listed = await asyncio.wait_for(jobs.ListJobs(jobs_pb2.ListJobsRequest()), BOUND)
    assert [j.id for j in listed.jobs] == [job.id]
    response = await http.get(f"/api/v1/jobs/{job.id}")
    assert response.status_code == 200 and response.json()["status"] == "pending"


async def read_sse(response: httpx.Response, events: list[tuple[str, dict]]) -> None:
    """Appends each event of an SSE response as it comes, to the stream's end."""
    name, data = None, []
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and name:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []


async def test_a_watch_rides_out_an_outage_and_resumes_from_the_jobs_state(
    node_processes, proxy, settings, database_url, processes
):
    jobs, http = node_processes.jobs, node_processes.http
    request = create_request(job_type="vlm_only", input=struct({"vlm_prompt": "What colour?"}))
    job = (await jobs.CreateJob(request)).job
    watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id))
    seen = [(await watch.read()).job.status]
    sse: list[tuple[str, dict]] = []
    async with http.stream("GET", f"/api/v1/jobs/{job.id}/events") as response:
        assert response.status_code == 200
        reading = asyncio.create_task(read_sse(response, sse))
        await wait_for(lambda: sse, timeout=BOUND)
        assert sse == [("job", sse[0][1])] and sse[0][1]["status"] == "pending"

        await proxy.cut()
        # While the node cannot see its database, a worker that can runs the
        # job to its end: the node hears none of it (notifications sent while
        # its LISTEN connection is away are lost).
        processes.append(start_worker(settings))
        store = JobStore(database_url, max_size=1)
        await store.open()
        try:
            async def completed():
                return (await store.get_job(job.id)).status == "completed"

            await wait_for(completed, timeout=30)
        finally:
            await store.close()
        await asyncio.sleep(3)  # several seconds down in all, the watches waiting
        assert not reading.done(), sse
        assert [name for name, _ in sse] == ["job"]

        await proxy.restore()
        while (message := await watch.read()) is not grpc.aio.EOF:  # the job as it is now, then the end
            seen.append(message.job.status)
        assert await watch.code() == grpc.StatusCode.OK
        await asyncio.wait_for(reading, 20)
    assert seen == [jobs_pb2.JOB_STATUS_PENDING, jobs_pb2.JOB_STATUS_COMPLETED]
    assert [name for name, _ in sse] == ["job", "job"], sse
    assert [data["status"] for _, data in sse] == ["pending", "completed"]
    assert sse[-1][1]["output"]["responses"], sse[-1]


async def test_an_event_stream_watches_again_when_the_node_restarts(node_processes, settings, processes):
    """The bridge's stream outlives the gRPC server under it: the watch that
    broke off (UNAVAILABLE) is opened again, and the stream goes on from the
    job's state then."""
    jobs, http = node_processes.jobs, node_processes.http
    request = create_request(job_type="vlm_only", input=struct({"vlm_prompt": "What colour?"}))
    job = (await jobs.CreateJob(request)).job
    sse: list[tuple[str, dict]] = []
    async with http.stream("GET", f"/api/v1/jobs/{job.id}/events") as response:
        assert response.status_code == 200
        reading = asyncio.create_task(read_sse(response, sse))
        await wait_for(lambda: sse, timeout=BOUND)
        server = node_processes.procs["server"]
        server.kill()
        await server.wait()
        await asyncio.sleep(1)  # the stream's watch has broken off
        assert not reading.done()
        node_processes.procs["server"] = await start_server(node_processes.env)
        processes.append(start_worker(settings))
        await asyncio.wait_for(reading, 30)
    assert {name for name, _ in sse} == {"job"}, sse  # no error
    statuses = [data["status"] for _, data in sse]
    assert statuses[0] == "pending" and statuses[-1] == "completed", statuses
    assert len(statuses) == len(set(statuses)), "each state once, though watched twice"


class ReadyEngine:
    async def ready(self) -> None:
        pass

    def servers(self) -> list:
        return []


async def test_a_watch_ends_unavailable_when_the_outage_outlasts_its_limit(proxied_url, proxy, monkeypatch):
    """`watch_outage_limit` (WATCH_OUTAGE_LIMIT) bounds the ride."""
    monkeypatch.setattr(job_service, "WATCH_RECHECK", 0.2)  # a quiet watch finds the outage at its next re-read
    store = JobStore(proxied_url, max_size=2)
    await store.open()
    watcher = JobWatcher(store)
    servicer = health.aio.HealthServicer()
    monitor = HealthMonitor(servicer, store, ReadyEngine(), jobs_service="jobs", inference_service="inference")
    server = grpc.aio.server()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobService(store, watcher, None, watch_outage_limit=1.0), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    watcher.start()
    monitor.start()
    try:
        job, _ = await store.create_job(job_type="vlm_only", domain_id="d", query={"ids": []}, input={})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = jobs_pb2_grpc.JobServiceStub(channel).WatchJob(jobs_pb2.WatchJobRequest(id=str(job.id)))
            assert (await watch.read()).job.status == jobs_pb2.JOB_STATUS_PENDING
            await proxy.cut()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(watch.read(), 20)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == DATABASE_UNAVAILABLE
    finally:
        await monitor.stop()
        await server.stop(0)
        await watcher.stop()
        await store.close()


# The store on its own.


async def test_a_fail_fast_store_refuses_at_once_while_down(proxied_url, proxy):
    store = JobStore(proxied_url, max_size=1)
    store.fail_fast = True
    await store.open()
    try:
        await store.ping()
        assert not store.down
        async with store.pool.connection():  # the store's only connection, held
            waiting = asyncio.create_task(store.list_jobs())
            await asyncio.sleep(0.2)
            assert not waiting.done(), "a call waits for a connection while the database answers"
            await proxy.cut()
            with pytest.raises(DatabaseUnavailable):
                await store.ping()
            assert store.down
            # The waiting call is answered now that the database is known
            # down, not after its wait for a connection.
            with pytest.raises(DatabaseUnavailable) as info:
                await waiting
            assert str(info.value) == DATABASE_UNAVAILABLE
        with pytest.raises(DatabaseUnavailable):
            await store.get_job(uuid.uuid4())
        await proxy.restore()
        await store.ping()
        assert not store.down
        assert await store.list_jobs() == []
    finally:
        await store.close()


async def test_a_workers_store_waits_through_a_short_outage(proxied_url, proxy):
    """Without fail_fast (a worker's store) a call waits for the database:
    a restart does not cost a job its result."""
    store = JobStore(proxied_url, max_size=2)
    await store.open()
    try:
        job, _ = await store.create_job(job_type="vlm_only", domain_id="d", query={"ids": []}, input={})
        await proxy.cut()
        reading = asyncio.create_task(store.get_job(job.id))
        await asyncio.sleep(2)
        assert not reading.done()
        await proxy.restore()
        assert (await asyncio.wait_for(reading, 10)).id == job.id
    finally:
        await store.close()


async def test_listen_says_when_it_reconnects(proxied_url, proxy, database_url):
    store = JobStore(proxied_url, max_size=1)
    notes = store.listen(JOB_EVENTS_CHANNEL, reconnect_delay=0.1)
    assert await asyncio.wait_for(anext(notes), BOUND) == ""
    await proxy.cut()
    nothing = asyncio.ensure_future(anext(notes))
    await asyncio.sleep(1)
    assert not nothing.done(), "nothing while the database is away"
    await proxy.restore()
    assert await asyncio.wait_for(nothing, BOUND) == "", "reconnected: notifications may have been missed"
    direct = JobStore(database_url, max_size=1)
    await direct.open()
    try:
        job, _ = await direct.create_job(job_type="vlm_only", domain_id="d", query={"ids": []}, input={})
        assert (await asyncio.wait_for(anext(notes), BOUND)).startswith(str(job.id))
    finally:
        await notes.aclose()
        await direct.close()
