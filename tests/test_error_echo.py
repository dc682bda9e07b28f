"""An error names what was wrong and repeats at most the start of a
caller's value, in a real `python -m server.main` and `python -m
server.bridge.main`: a 20,000-character job id is NOT_FOUND (not
RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"), a 500 KB
domain_id a 400 that names the field."""

import asyncio
import sys

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from devpeers.ports import free_port
from server.errors import MAX_MESSAGE_BYTES, MAX_SHOWN, listed, quoted, short_message, shown
from tests.fixtures import DOMAIN_ID, settings_env, wait_for
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

SHORT = 200  # characters a message about a caller's value may take


def test_shown_cuts_a_long_value():
    assert shown("frame-7") == "frame-7"
    assert shown("a\nb") == "'a\\nb'"
    cut = shown("b" * 20_000)
    assert len(cut) == MAX_SHOWN and cut.endswith("...")
    assert len(shown("\x00" * 20_000)) == MAX_SHOWN  # escaped, then cut


def test_quoted_keeps_the_quotes_of_a_cut_value():
    assert quoted("") == "''"
    assert quoted("../etc") == "'../etc'"
    assert quoted("b" * 20_000) == repr("b" * MAX_SHOWN) + "..."


def test_listed_names_a_few_and_counts_the_rest():
    assert listed(["a", "b"]) == "a, b"
    assert listed([f"k{n}" for n in range(10_000)]) == "k0, k1, k2, k3, k4 and 9,995 more"


def test_short_message_fits_trailing_metadata():
    assert short_message("job not found") == "job not found"
    for text in ("b" * 500_000, "é" * 500_000, "😀" * 500_000):
        cut = short_message(text)
        assert len(cut.encode()) <= MAX_MESSAGE_BYTES and cut.endswith("...")


@pytest.fixture
async def node_processes(settings):
    """The gRPC server and the bridge, each its own process; yields (gRPC target, bridge URL)."""
    grpc_port, http_port = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.main", env=settings_env(settings, GRPC_PORT=grpc_port)
    )
    bridge = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.bridge.main",
        env=settings_env(settings, GRPC_TARGET=f"127.0.0.1:{grpc_port}", HTTP_HOST="127.0.0.1", HTTP_PORT=http_port),
    )
    base = f"http://127.0.0.1:{http_port}"

    async def bridge_up():
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{base}/health")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
        await wait_for(bridge_up, timeout=30)
        yield f"127.0.0.1:{grpc_port}", base
    finally:
        for process in (bridge, server):
            process.terminate()
            await process.wait()


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        response = call
        if hasattr(call, "read"):  # a stream: the error comes with the first read
            response = call.read()
        await response
    return info.value


async def test_grpc_errors_repeat_only_the_start_of_a_long_value(node_processes):
    target, _ = node_processes
    long_id = "b" * 20_000
    vlm_input = struct_pb2.Struct()
    vlm_input.update({"vlm_prompt": "What colour?"})
    async with grpc.aio.insecure_channel(target) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        for call in (
            jobs.GetJob(jobs_pb2.GetJobRequest(id=long_id)),
            jobs.CancelJob(jobs_pb2.CancelJobRequest(id=long_id)),
            jobs.RetryJob(jobs_pb2.RetryJobRequest(id=long_id, job_type="vlm_only", input=vlm_input)),
        ):
            error = await refusal(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
            assert error.details() == f"job {quoted(long_id)} not found" and len(error.details()) < SHORT
        watched = await refusal(jobs.WatchJob(jobs_pb2.WatchJobRequest(id=long_id)))
        assert watched.code() == grpc.StatusCode.NOT_FOUND, watched.details()
        assert len(watched.details().encode()) <= MAX_MESSAGE_BYTES

        huge = "b" * 500_000
        for request, words in (
            (jobs_pb2.CreateJobRequest(job_type="vlm_only", domain_id=huge), "domain_id must be a UUID, got 'bbb"),
            (jobs_pb2.CreateJobRequest(job_type=huge, domain_id=DOMAIN_ID), "unknown job_type 'bbb"),
        ):
            error = await refusal(jobs.CreateJob(request))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert error.details().startswith(words) and len(error.details()) < SHORT

        many_keys = struct_pb2.Struct()
        many_keys.update({f"key{n}": "x" for n in range(10_000)})
        request = jobs_pb2.CreateJobRequest(job_type="vlm_only", domain_id=DOMAIN_ID, input=many_keys)
        request.query.update({"ids": []})
        error = await refusal(jobs.CreateJob(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().endswith("and 9,995 more") and len(error.details()) < SHORT


async def test_the_bridge_names_the_field_of_a_500_kb_value(node_processes):
    _, base = node_processes
    huge = "b" * 500_000
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        body = {"job_type": "vlm_only", "domain_id": huge, "query": {"ids": []}, "input": {"vlm_prompt": "x"}}
        answer = await http.post("/api/v1/jobs", json=body)
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]
        assert message.startswith("domain_id must be a UUID, got 'bbb") and len(message) < SHORT

        answer = await http.post("/api/v1/jobs", json={"job_type": "vlm_only", huge: 1})
        assert answer.status_code == 400 and len(answer.json()["error"]) < SHORT

        answer = await http.get("/api/v1/jobs/" + "b" * 8000)
        assert answer.status_code == 404 and len(answer.json()["error"]) < SHORT
