"""What the test modules share besides pytest fixtures (those are in
conftest.py): constants of the test world, the node's processes and apps
run for a test, requests, and waiting."""

import asyncio
import contextlib
import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from server.store import JobStore
from vlmnode.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 15_000  # what a browser test waits for a page to show something


# The test world.

DOMAIN_ID = "23d60e61-6978-4f6b-a59d-9ffa027755fc"


COLOURS = ["white", "red", "red", "blue", "red", "green"]


INPUT = {"prompt": "When was the red box on the shelf?", "vlm_prompt": "Describe the image", "webhook_url": ""}


def struct(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def create_request(**kw) -> jobs_pb2.CreateJobRequest:
    args = dict(job_type="task_timing_v1", domain_id=DOMAIN_ID, query=struct({"ids": []}), input=struct(INPUT))
    args.update(kw)
    return jobs_pb2.CreateJobRequest(**args)


async def expect_error(call, code: grpc.StatusCode, match: str):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()


# Processes and apps of the node.


@contextlib.asynccontextmanager
async def running_worker(settings, pipelines=None):
    """A worker running in this test's event loop until the block ends; with
    `pipelines`, a worker of those, which use no peer."""
    import asyncio

    from server.peers import domain_client, engines
    from worker.pipelines import PIPELINES, Peers
    from worker.runner import Worker

    store = JobStore(settings.postgres_url, max_size=4)
    await store.open()
    if pipelines is None:
        peers = Peers(settings=settings, engines=engines(settings), domain=domain_client(settings))
    else:
        peers = Peers(settings=settings, engines=None, domain=None)
    w = Worker(store, peers, worker_name="test-worker", pipelines=pipelines or PIPELINES)
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, 10)
        for peer in (peers.engines, peers.domain):
            if peer is not None:
                await peer.aclose()
        await store.close()


@contextlib.asynccontextmanager
async def running_bridge(target: str, settings=None, **app_options):
    """The bridge app under uvicorn, in this test's event loop, on a free
    local port, configured as `python -m server.bridge.main` configures it.
    Yields its base URL."""
    import asyncio
    import socket

    import uvicorn

    from server.bridge.app import create_app
    from server.bridge.main import uvicorn_options
    from server.config import Settings

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that
    # say so, and without it each answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    options = uvicorn_options(settings or Settings())
    app = create_app(target, **app_options)
    config = uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=2, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def settings_env(settings, **overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "OLLAMA_", "JOB_"))}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value not in ("", None):
            env[f.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def start_worker(settings, **overrides) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.main"], env=settings_env(settings, **overrides))


async def wait_for(predicate, timeout: float = 15.0, every: float = 0.05):
    """Polls `predicate` (plain or async) until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout

    async def check():
        result = predicate()
        return await result if inspect.isawaitable(result) else result

    while not (result := await check()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)
    return result


FINAL = {jobs_pb2.JOB_STATUS_COMPLETED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED}


async def wait_final(jobs, job_id: str, timeout: float = 20) -> jobs_pb2.Job:
    async def watch():
        async for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job_id)):
            if event.job.status in FINAL:
                return event.job

    return await asyncio.wait_for(watch(), timeout)


def as_dict(message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(message)


def vlm_requests(fake_ollama) -> list[dict]:
    return [r for r in fake_ollama.requests if r["images"]]


TYPESCRIPT_CLIENT = ROOT / "clients" / "typescript"


async def run_in_typescript_client(*command: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Runs a command in clients/typescript without blocking the event loop; fails
    the test with its output unless it exits 0."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=TYPESCRIPT_CLIENT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        pytest.fail(f"{' '.join(command)} took over {timeout} s:\n{out.decode(errors='replace')}")
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"{' '.join(command)} exited {process.returncode}:\n{text}"
    return text
