"""The Python client (`vlmnode.Client`, `vlmnode.AsyncClient`) and the
`vlmnode` command against a running node.

The node serves gRPC in the test's event loop, so the blocking Client runs
in a thread and the command in a subprocess while the loop keeps serving."""

import asyncio
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import grpc
import pytest

from devpeers.images import solid_jpeg
from tests.fixtures import DOMAIN_ID
from vlmnode import (
    AnswerChunk,
    AsyncClient,
    Client,
    Frame,
    InvalidArgumentError,
    Job,
    NotFoundError,
    Notice,
    UnavailableError,
    VlmNodeError,
)
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

TIMING_INPUT = {"prompt": "When was the red box on the shelf?", "vlm_prompt": "Describe the image", "webhook_url": ""}
COLOURS = ["red", "blue", "green", "yellow"]


@pytest.fixture
def settings(settings):
    """A VLM that sees several images, so a batch's answer names each frame (moondream's
    one contact sheet is tested in test_inference)."""
    return dataclasses.replace(settings, vlm_model="gemma3:4b")


@pytest.fixture
def target(node) -> str:
    return f"127.0.0.1:{node.port}"


@pytest.fixture
async def client(target):
    async with AsyncClient(target) as c:
        yield c


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def frames_dir(tmp_path):
    """A folder of photos as glasses save them, plus files that are not frames."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for n, colour in reversed(list(enumerate(COLOURS))):
        (folder / f"frame_{n:02d}.jpg").write_bytes(solid_jpeg(colour))
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.jpg").write_bytes(solid_jpeg("white"))
    return folder


def _env(extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VLMNODE_TARGET", "VLMNODE_TOKEN")}
    return {**env, **(extra or {})}


async def vlmnode(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    """Runs the command; returns its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vlmnode.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_env(env),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


async def answers(stream) -> list[tuple[str, AnswerChunk]]:
    """Whole answers (text, last chunk) from an async infer stream."""
    whole, text = [], ""
    async for item in stream:
        assert isinstance(item, AnswerChunk), item
        text += item.text
        if item.done:
            whole.append((text, item))
            text = ""
    return whole


# The async client: jobs.


def test_the_clients_final_statuses_are_the_nodes():
    """The client package cannot import the node's: its copy is checked here."""
    from server.job_status import FINAL
    from vlmnode._types import FINAL_STATUSES

    assert FINAL_STATUSES == {str(status) for status in FINAL}


async def test_create_get_list_cancel_retry(client):
    job = await client.create_job("task_timing_v1", DOMAIN_ID, input=TIMING_INPUT)
    assert isinstance(job, Job) and job.status == "pending" and not job.finished
    assert job.input == TIMING_INPUT and job.query == {"ids": []} and job.max_attempts == 100
    assert uuid.UUID(job.idempotency_key)  # every create carries a key, a new one unless given
    assert isinstance(job.created_at, datetime) and job.created_at.tzinfo == UTC
    assert await client.get_job(job.id) == job

    other = await client.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "hi"}, priority=3)
    assert [j.id for j in await client.list_jobs()] == [other.id, job.id]
    assert [j.id for j in await client.list_jobs(job_type="vlm_only")] == [other.id]
    assert [j.id for j in await client.list_jobs(limit=1, offset=1)] == [job.id]

    cancelled = await client.cancel_job(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished
    assert [j.id for j in await client.list_jobs(status="cancelled")] == [job.id]

    again = await client.retry_job(job.id)  # as it was
    assert again.status == "pending" and again.input == TIMING_INPUT
    await client.cancel_job(job.id)
    changed = await client.retry_job(job.id, {**TIMING_INPUT, "prompt": "And the blue box?"})
    assert changed.status == "pending" and changed.input["prompt"] == "And the blue box?"
    assert json.loads(json.dumps(changed.to_dict()))["created_at"] == changed.created_at.isoformat()


async def test_watch_follows_a_job_to_completion(client, worker, fake_ollama):
    fake_ollama.latency = 0.05  # long enough to see the job run
    job = await client.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "What colour?"})
    seen = [update async for update in client.watch_job(job.id)]
    assert seen[0].id == job.id and seen[-1].status == "completed" and "running" in [j.status for j in seen]
    responses = seen[-1].output["responses"]
    assert len(responses) == 6 and all(r["response"].startswith("a 64x48 image, mostly") for r in responses)


async def test_watch_ends_when_a_job_is_cancelled(client):
    job = await client.create_job("task_timing_v1", DOMAIN_ID, input=TIMING_INPUT)
    watch = client.watch_job(job.id)
    assert (await anext(watch)).status == "pending"
    await client.cancel_job(job.id)
    assert [j.status async for j in watch] == ["cancelled"]


async def test_errors_are_typed_and_readable(client, closed_port):
    missing = str(uuid.uuid4())
    for call in (client.get_job(missing), client.cancel_job(missing), client.retry_job(missing)):
        with pytest.raises(NotFoundError) as info:
            await call
        assert info.value.code == "NOT_FOUND" and "not found" in info.value.message
    with pytest.raises(NotFoundError):
        await anext(client.watch_job(missing))

    with pytest.raises(InvalidArgumentError, match="unknown job_type") as info:
        await client.create_job("task_timing_v9", DOMAIN_ID, input=TIMING_INPUT)
    assert info.value.code == "INVALID_ARGUMENT" and isinstance(info.value, VlmNodeError)
    with pytest.raises(InvalidArgumentError, match="unknown status 'done'"):  # refused before sending
        await client.list_jobs(status="done")
    with pytest.raises(InvalidArgumentError, match="input is not JSON"):
        await client.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": object()})
    with pytest.raises(VlmNodeError, match="No data found") as info:
        await client.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "x"}, query={"ids": [str(uuid.uuid4())]})
    assert info.value.code == "FAILED_PRECONDITION"

    async with AsyncClient(f"127.0.0.1:{closed_port}", timeout=5) as down:
        with pytest.raises(UnavailableError) as info:
            await down.list_jobs()
    assert str(info.value) == f"cannot reach the node at 127.0.0.1:{closed_port} (connection refused)"
    assert "failed to connect" in info.value.details


# The async client: realtime inference.


async def test_infer_a_folder_in_name_order(client, frames_dir, fake_ollama):
    got = await answers(client.infer(frames_dir, "What colour?", batch_size=2))
    assert [text for text, _ in got] == [
        "a 64x48 image, mostly red; a 64x48 image, mostly blue",
        "a 64x48 image, mostly green; a 64x48 image, mostly yellow",
    ]
    assert [last.frame_ids for _, last in got] == [["frame_00.jpg", "frame_01.jpg"], ["frame_02.jpg", "frame_03.jpg"]]
    assert [last.answer_id for _, last in got] == [1, 2] and got[-1][1].frames_dropped == 0
    assert [r["prompt"] for r in fake_ollama.requests if r["images"]] == ["What colour?"] * 2


async def test_infer_from_a_camera(client, fake_ollama):
    async def camera():
        for colour in ("green", "blue"):
            yield solid_jpeg(colour)
            await asyncio.sleep(0.01)

    got = await answers(client.infer(camera(), "What colour?", batch_size=1, num_predict=3, model="moondream:1.8b"))
    assert [last.frame_ids for _, last in got] == [["1"], ["2"]]
    assert all(len(text.split()) == 3 for text, _ in got)
    assert {r["model"] for r in fake_ollama.requests if r["images"]} == {"moondream:1.8b"}

    stamped = Frame(solid_jpeg("red"), id="cam-7", captured_at=datetime(2025, 8, 10, 16, 40, tzinfo=UTC))
    [(text, last)] = await answers(client.infer([stamped], "What colour?", batch_size=1))
    assert last.frame_ids == ["cam-7"] and text == "a 64x48 image, mostly red"


async def test_infer_without_a_prompt_gets_a_notice(client):
    items = [item async for item in client.infer([solid_jpeg("red")], batch_size=1)]
    assert items == [Notice("No prompt received for image batch", ["1"])]


async def test_infer_bad_input(client, tmp_path):
    with pytest.raises(InvalidArgumentError, match="batch_size must be between 1 and 16"):
        await answers(client.infer([solid_jpeg("red")], "hi", batch_size=99))
    # A bad frame is a notice and the stream goes on; the fifth in a row ends it.
    items = [item async for item in client.infer([b"hello", solid_jpeg("red")], "hi", batch_size=1)]
    assert items[0] == Notice("frame 1: not an image", ["1"]) and items[-1].done and items[-1].frame_ids == ["2"]
    with pytest.raises(InvalidArgumentError, match=r"^frame 5: not an image \(5 bad frames in a row end the stream\)$"):
        async for _ in client.infer([b"hello"] * 5, "hi", batch_size=1):  # four notices, then the end
            pass
    with pytest.raises(InvalidArgumentError, match="cannot read the frame .*missing.jpg"):
        await answers(client.infer([tmp_path / "missing.jpg"], "hi", batch_size=1))
    with pytest.raises(InvalidArgumentError, match="frame 1 is a int"):
        await answers(client.infer([42], "hi"))

    async def broken_camera():
        yield solid_jpeg("red")
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="camera unplugged"):
        await answers(client.infer(broken_camera(), "hi", batch_size=5, flush_after=-1))


# The blocking client, in a thread.


async def test_sync_client_jobs_and_infer(target, worker, frames_dir, closed_port):
    def work() -> tuple[list[str], list[str], str]:
        with Client(target) as node:
            job = node.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "What colour?"})
            assert node.get_job(job.id).id == job.id and [j.id for j in node.list_jobs()] == [job.id]
            statuses = [j.status for j in node.watch_job(job.id)]
            with pytest.raises(NotFoundError):
                node.cancel_job(str(uuid.uuid4()))
            texts, text = [], ""
            for chunk in node.infer(sorted(frames_dir.glob("frame_*.jpg")), "What colour?", batch_size=2):
                text += chunk.text
                if chunk.done:
                    texts.append(text)
                    text = ""

            def broken_camera():
                yield solid_jpeg("red")
                raise OSError("camera unplugged")

            with pytest.raises(OSError, match="camera unplugged"):
                list(node.infer(broken_camera(), "hi", batch_size=5, flush_after=-1))
        with Client(f"127.0.0.1:{closed_port}") as down:
            with pytest.raises(UnavailableError) as info:
                down.get_job("x")
        return statuses, texts, str(info.value)

    statuses, texts, down = await asyncio.wait_for(asyncio.to_thread(work), 20)
    assert statuses[0] in ("pending", "running") and statuses[-1] == "completed"
    assert texts == [
        "a 64x48 image, mostly red; a 64x48 image, mostly blue",
        "a 64x48 image, mostly green; a 64x48 image, mostly yellow",
    ]
    assert down.startswith("cannot reach the node at 127.0.0.1:")


# TLS and the bearer token, against a small TLS server that records metadata.


class _RecordingJobs(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self):
        self.metadata: list[dict] = []

    async def GetJob(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return jobs_pb2.GetJobResponse(job=jobs_pb2.Job(id=request.id, status=jobs_pb2.JOB_STATUS_RUNNING))


@pytest.fixture
async def tls_server(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    servicer = _RecordingJobs()
    server = grpc.aio.server()
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    await server.start()
    yield f"127.0.0.1:{port}", cert, servicer
    await server.stop(0)


async def test_tls_and_bearer_token(tls_server):
    target, cert, servicer = tls_server
    async with AsyncClient(target, ca_file=cert, token="s3cret-token") as node:
        job = await node.get_job("abc")
    assert job.id == "abc" and job.status == "running"
    assert servicer.metadata[0]["authorization"] == "Bearer s3cret-token"

    code, out, _ = await vlmnode("--target", target, "--ca-file", str(cert), "--json", "jobs", "get", "xyz",
                                 env={"VLMNODE_TOKEN": "from-env"})
    assert code == 0 and json.loads(out)["id"] == "xyz"
    assert servicer.metadata[1]["authorization"] == "Bearer from-env"

    code, out, err = await vlmnode("--target", target, "jobs", "get", "xyz")  # no TLS: the server hangs up
    assert code == 4 and err == f"vlmnode: cannot reach the node at {target} (connection closed)\n"
    code, out, err = await vlmnode("--target", target, "--tls", "jobs", "get", "xyz")  # not a CA we trust
    assert code == 4 and err == f"vlmnode: cannot reach the node at {target} (TLS handshake failed)\n"

    async with AsyncClient(target, ca_file=cert) as anonymous:
        await anonymous.get_job("abc")
    assert "authorization" not in servicer.metadata[2]
    with pytest.raises(InvalidArgumentError, match="cannot read the CA file"):
        AsyncClient(target, ca_file=cert.parent / "nope.pem")


# The command.


async def test_cli_jobs(target, worker, fake_ollama):
    fake_ollama.latency = 0.05  # long enough to see the job run
    code, out, err = await vlmnode("--target", target, "jobs", "submit", "--domain", DOMAIN_ID, "--type", "vlm_only",
                                   "--vlm-prompt", "What colour?", "--watch")
    assert code == 0, err
    job_id = out.splitlines()[0].split()[-1]
    # stderr is not a terminal here: one line per change of status.
    assert f"job {job_id}: running (attempt 1)" in err.splitlines()
    assert err.splitlines()[-1] == f"job {job_id}: completed"
    assert f"id:       {job_id}" in out and "status:   completed" in out and "mostly red" in out

    code, out, err = await vlmnode("jobs", "watch", job_id, "--target", target)  # options after the command too
    assert code == 0 and err == f"job {job_id}: completed\n" and "status:   completed" in out

    code, out, _ = await vlmnode("--target", target, "jobs", "list")
    header, row = out.splitlines()
    assert header.split() == ["ID", "STATUS", "TYPE", "CREATED", "(UTC)", "ATTEMPTS"]
    assert row.split()[:3] == [job_id, "completed", "vlm_only"] and row.split()[-1] == "1/100"

    code, out, _ = await vlmnode("--target", target, "--json", "jobs", "get", job_id)
    got = json.loads(out)
    assert code == 0 and got["status"] == "completed" and len(got["output"]["responses"]) == 6

    code, out, _ = await vlmnode("--target", target, "jobs", "retry", job_id, "--vlm-prompt", "Which colour?")
    assert code == 0 and out.strip() == f"{job_id}  pending"
    code, out, _ = await vlmnode("--target", target, "--json", "jobs", "watch", job_id)
    updates = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and updates[-1]["status"] == "completed" and updates[-1]["attempts"] == 1
    assert updates[-1]["input"] == {"vlm_prompt": "Which colour?"}

    code, out, _ = await vlmnode("--target", target, "--json", "jobs", "list", "--status", "completed", "--limit", "5")
    assert code == 0 and [j["id"] for j in json.loads(out)] == [job_id]


async def test_cli_submit_cancel_watch(target):
    code, out, err = await vlmnode("--target", target, "jobs", "submit", "--domain", DOMAIN_ID,
                                   "--prompt", "When?", "--vlm-prompt", "Describe", "--ids", "")
    assert code == 0 and err == ""
    job_id = out.strip()  # the id alone, for scripts
    code, out, _ = await vlmnode("--target", target, "--json", "jobs", "get", job_id)
    job = json.loads(out)
    assert code == 0 and job["status"] == "pending" and job["query"] == {"ids": []} and job["job_type"] == "task_timing_v1"
    assert job["input"] == {"prompt": "When?", "vlm_prompt": "Describe"}

    code, out, err = await vlmnode("--target", target, "jobs", "cancel", job_id)
    assert code == 0 and out.split() == [job_id, "cancelled"]
    code, out, err = await vlmnode("--target", target, "--json", "jobs", "watch", job_id)
    assert code == 1 and [json.loads(line)["status"] for line in out.splitlines()] == ["cancelled"]
    assert err == f"vlmnode: job {job_id} cancelled\n"
    code, out, err = await vlmnode("--target", target, "jobs", "retry", job_id, "--input", '{"prompt": "Now?"}')
    assert code == 0 and out.split() == [job_id, "pending"]
    code, out, _ = await vlmnode("--target", target, "--json", "jobs", "list", "--status", "pending")
    assert [j["input"] for j in json.loads(out)] == [{"prompt": "Now?", "vlm_prompt": "Describe"}]


async def test_cli_stream(target, frames_dir):
    code, out, err = await vlmnode("--target", target, "stream", str(frames_dir), "--prompt", "What colour?",
                                   "--batch-size", "2")
    assert code == 0, err
    assert out.splitlines() == [
        "a 64x48 image, mostly red; a 64x48 image, mostly blue",
        "a 64x48 image, mostly green; a 64x48 image, mostly yellow",
    ]
    # stderr is not a terminal here: one line per update.
    progress = err.splitlines()
    assert progress[0] == "frames sent 1/4, answers 0, dropped 0"
    assert progress[-1] == "frames sent 4/4, answers 2, dropped 0"

    code, out, err = await vlmnode("--target", target, "--json", "stream", str(frames_dir), "--prompt", "What colour?",
                                   "--batch-size", "4", "--interval", "0.01")
    [answer] = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and err == ""
    assert answer["answer_id"] == 1 and answer["frame_ids"] == [f"frame_{n:02d}.jpg" for n in range(4)]
    assert answer["text"].count("a 64x48 image") == 4


async def test_cli_errors(target, closed_port, tmp_path):
    missing = str(uuid.uuid4())
    empty, one = tmp_path / "empty", tmp_path / "one"
    empty.mkdir()
    one.mkdir()
    (one / "red.png").write_bytes(solid_jpeg("red"))
    cases = [
        (["--target", f"127.0.0.1:{closed_port}", "jobs", "list"], 4,
         f"vlmnode: cannot reach the node at 127.0.0.1:{closed_port} (connection refused)"),
        (["--target", target, "jobs", "get", missing], 3, "not found"),
        (["--target", target, "jobs", "watch", missing], 3, "not found"),
        (["--target", target, "jobs", "submit", "--domain", DOMAIN_ID, "--prompt", "When?"], 2,
         "vlmnode: input.vlm_prompt is required"),
        (["--target", target, "jobs", "submit", "--domain", DOMAIN_ID, "--input", "{nope"], 2,
         "vlmnode: --input is not valid JSON"),
        (["--target", target, "jobs", "submit", "--domain", "shop-1", "--vlm-prompt", "x", "--type", "vlm_only"], 2,
         "vlmnode: domain_id must be a UUID"),
        (["--target", target, "stream", str(tmp_path / "nowhere"), "--prompt", "hi"], 2,
         f"vlmnode: {tmp_path / 'nowhere'} is not a folder"),
        (["--target", target, "stream", str(empty), "--prompt", "hi"], 2, "vlmnode: no images"),
        (["--target", target, "stream", str(one), "--prompt", "hi", "--batch-size", "99"], 2,
         "vlmnode: batch_size must be between 1 and 16"),
        (["--target", target, "jobs", "list", "--status", "done"], 2, "invalid choice: 'done'"),
        (["jobs"], 2, "the following arguments are required"),
    ]
    results = await asyncio.gather(*(vlmnode(*args) for args, _, _ in cases))
    for (args, want_code, want_err), (code, _out, err) in zip(cases, results, strict=True):
        assert code == want_code, (args, code, err)
        assert want_err in err, (args, err)
        if not err.startswith("usage:"):  # argparse's errors come with the usage
            assert err.splitlines()[-1].startswith("vlmnode: "), (args, err)  # one line, never a trace


# Creates that the caller gave up on make one job, never two.

CREATE_JOB = "/vlmnode.v1.JobService/CreateJob"


class LosingProxy:
    """A gRPC server in front of the node that passes CreateJob on, and loses
    the node's answer to the first `lose` of them as a bad network would: the
    job is made, the caller hears nothing before its deadline (`how` =
    "late") or hears the connection go (`how` = "reset"). Keeps the
    idempotency key of every create it passed on."""

    def __init__(self, node_target: str, *, lose: int, how: str):
        self.node_target, self.lose, self.how = node_target, lose, how
        self.keys: list[str] = []

    async def __aenter__(self):
        self.channel = grpc.aio.insecure_channel(self.node_target)
        forward = self.channel.unary_unary(CREATE_JOB)  # bytes in, bytes out
        self.server = grpc.aio.server()

        async def create(request: bytes, context) -> bytes:
            self.keys.append(jobs_pb2.CreateJobRequest.FromString(request).idempotency_key)
            try:
                answer = await forward(request, timeout=10)
            except grpc.aio.AioRpcError as exc:  # the node's own refusal, passed on
                await context.abort(exc.code(), exc.details())
            if self.lose > 0:
                self.lose -= 1
                if self.how == "reset":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
                await asyncio.sleep(context.time_remaining() + 1)  # the caller's deadline passes first
            return answer

        handler = grpc.unary_unary_rpc_method_handler(create)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("vlmnode.v1.JobService", {"CreateJob": handler}),)
        )
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()
        return self

    async def __aexit__(self, *exc):
        await self.server.stop(0)
        await self.channel.close()


async def test_a_create_whose_answer_was_lost_is_sent_again_with_its_key(target, client):
    async with LosingProxy(target, lose=1, how="late") as proxy, AsyncClient(proxy.target, timeout=1) as flaky:
        job = await flaky.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "What colour?"})
    assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1] == job.idempotency_key
    assert uuid.UUID(job.idempotency_key)
    assert [j.id for j in await client.list_jobs()] == [job.id]  # the node made it once


async def test_the_blocking_client_resends_a_create_with_its_key_too(target, client):
    async with LosingProxy(target, lose=2, how="reset") as proxy:
        def create() -> Job:
            with Client(proxy.target, timeout=5) as node:
                return node.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "hi"}, idempotency_key="order-17")

        job = await asyncio.wait_for(asyncio.to_thread(create), 20)
    assert proxy.keys == ["order-17"] * 3 and job.idempotency_key == "order-17"
    assert [j.id for j in await client.list_jobs()] == [job.id]


async def test_a_create_lost_every_time_fails_after_three_tries(target, client):
    async with LosingProxy(target, lose=5, how="reset") as proxy, AsyncClient(proxy.target) as flaky:
        with pytest.raises(UnavailableError, match=r"\(tried 3 times\)$"):
            await flaky.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "hi"})
    assert len(proxy.keys) == 3 and len(set(proxy.keys)) == 1
    assert len(await client.list_jobs()) == 1  # made by the first try; the others found it
    with pytest.raises(InvalidArgumentError):  # what the node refuses is not sent again
        async with LosingProxy(target, lose=0, how="reset") as proxy, AsyncClient(proxy.target) as c:
            await c.create_job("task_timing_v9", DOMAIN_ID, input=TIMING_INPUT)
    assert len(proxy.keys) == 1


async def test_creates_given_up_on_then_retried_make_one_job_each(target, client):
    """A 1 ms deadline: the caller sees DEADLINE_EXCEEDED though the node may
    have made the job. Trying again with the same key gets that job."""
    keys = [f"tiny-deadline-{n}" for n in range(20)]

    async def create(key: str, timeout: float | None) -> Job | None:
        try:
            return await client.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "hi"}, idempotency_key=key,
                                           timeout=timeout)
        except VlmNodeError as exc:
            assert exc.code == "DEADLINE_EXCEEDED", exc
            return None

    await asyncio.gather(*(create(key, 0.001) for key in keys))
    made = await asyncio.gather(*(create(key, None) for key in keys))
    listed = await client.list_jobs()
    assert sorted(j.idempotency_key for j in listed) == sorted(keys)
    assert {j.id for j in made} == {j.id for j in listed}

    # With the client's own keys, as most callers leave it: never more jobs than creates.
    await asyncio.gather(*(client.create_job("vlm_only", DOMAIN_ID, input={"vlm_prompt": "hi"}, timeout=0.001)
                           for _ in range(20)), return_exceptions=True)
    await asyncio.sleep(0.5)  # what the node was still doing when the callers gave up
    extra = [j for j in await client.list_jobs() if j.idempotency_key not in keys]
    assert len(extra) <= 20 and len({j.idempotency_key for j in extra}) == len(extra)


async def test_cli_submit_says_how_to_get_a_job_it_did_not_hear_of(target, client):
    args = ["--target", target, "jobs", "submit", "--domain", DOMAIN_ID, "--type", "vlm_only", "--vlm-prompt", "hi"]
    code, out, err = await vlmnode(*args, "--timeout", "0.001")
    assert code == 4 and out == "", err
    key = re.search(r"submit again with --idempotency-key (\S+) to get it", err)
    assert key and uuid.UUID(key[1]) and err.startswith("vlmnode: the node at "), err
    code, out, err = await vlmnode(*args, "--idempotency-key", key[1])
    assert code == 0, err
    assert [j.id for j in await client.list_jobs()] == [out.strip()]
    assert (await client.get_job(out.strip())).idempotency_key == key[1]
