"""No process of the node logs a secret, at any level: the real processes
(gRPC server, bridge, worker) at LOG_LEVEL=DEBUG, the token used over REST,
server-sent events, the WebSocket (subprotocol and query) and gRPC, wrong
tokens too, and then every line they wrote is searched for it."""

import asyncio
import io
import json
import logging
import signal
import subprocess
import sys

import grpc
import httpx
import pytest
import websockets

from devpeers.images import solid_jpeg
from devpeers.ports import free_port
from server import logs
from tests.fixtures import create_request, settings_env, struct, wait_for
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

TOKEN = "tok-5b2e7c91d4a8f6e0"
WRONG = "wrong-9f3a1c77e2b4"


@pytest.mark.parametrize(
    "line",
    [
        "< Authorization: Bearer {t}",
        "< authorization: Basic {t}",
        "< Sec-WebSocket-Protocol: vlmnode, bearer.{t}",
        "> Sec-WebSocket-Protocol: bearer.{t}",
        "< GET /api/v1/ws?access_token={t}&num_predict=3 HTTP/1.1",
        '127.0.0.1:5 - "WebSocket /api/v1/ws?num_predict=3&access_token={t}" 401',
        "metadata: (('authorization', 'Bearer {t}'), ('user-agent', 'grpc-python'))",
        "headers: {{'Authorization': 'Bearer {t}', 'Host': 'x'}}",
        '{{"access_token": "{t}"}}',
        "GET https://hooks.example.com/x?token={t}&b=1",
        "postgresql://vlmnode:{t}@db:5432/vlmnode",
        "Bearer {t}",
    ],
)
def test_every_form_a_token_is_printed_in_is_blanked(line):
    blanked = logs.redact(line.format(t=TOKEN))
    assert TOKEN not in blanked and "[redacted]" in blanked, blanked


def test_what_is_not_a_secret_is_left_alone():
    for line in ("missing or invalid bearer token", "Bearer tokens the node accepts", "GET /api/v1/jobs?limit=10",
                 '127.0.0.1:5 - "WebSocket /api/v1/ws?num_predict=3" [accepted]'):
        assert logs.redact(line) == line


def test_the_filter_blanks_messages_arguments_tracebacks_and_extras():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactSecrets())
    handler.setFormatter(logging.Formatter("%(message)s %(url)s"))
    logger = logging.getLogger("test_log_secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"bad header Authorization: Bearer {TOKEN}")
        except ValueError:
            logger.exception("%s said %r", "client", f"bearer.{TOKEN}", extra={"url": f"/x?access_token={TOKEN}"})
        logger.warning("%d jobs", 3, extra={"url": "-"})  # nothing to blank: left as it was logged
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert TOKEN not in text
    assert "client said 'bearer.[redacted]' /x?access_token=[redacted]" in text
    assert "Authorization: [redacted]" in text and "ValueError" in text
    assert "3 jobs -" in text


async def test_an_engines_api_key_is_never_logged(caplog):
    from devpeers.fake_openai import FakeOpenAI
    from server.errors import PeerRefused
    from server.openai_engine import OpenAIEngine

    caplog.set_level(logging.DEBUG)
    model = "Qwen/Qwen2.5-1.5B-Instruct"
    with FakeOpenAI(api_key=TOKEN) as fake:
        async with OpenAIEngine(fake.url, role="LLM", model=model, api_key=TOKEN) as engine:
            await engine.ready()
            assert (await engine.generate("hi")).text == "You said: hi"
        async with OpenAIEngine(fake.url, role="LLM", model=model, api_key=WRONG) as engine:
            with pytest.raises(PeerRefused, match="Invalid API Key"):
                await engine.ready()
    assert "HTTP Request: POST" in caplog.text  # the client's requests were logged, at DEBUG
    assert TOKEN not in caplog.text and WRONG not in caplog.text


async def _use_the_token_everywhere(grpc_target: str, base: str, webhook_url: str) -> None:
    auth = [("authorization", f"Bearer {TOKEN}")]
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        assert (await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth)).jobs is not None
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=[("authorization", f"Bearer {WRONG}")])
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        request = create_request(job_type="vlm_only", input=struct({"vlm_prompt": "Describe", "webhook_url": webhook_url}))
        job = (await jobs.CreateJob(request, metadata=auth)).job

    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=20) as http:
        assert (await http.get("/api/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
        for refused in (
            await http.get("/api/v1/jobs", headers={"Authorization": f"Bearer {WRONG}"}),
            await http.get("/api/v1/jobs", params={"access_token": TOKEN}),  # not accepted in a REST query
            await http.get("/api/v1/jobs", params={"access_token": WRONG}),
            await http.get(f"/api/v1/jobs/{job.id}/events", params={"access_token": WRONG}),
        ):
            assert refused.status_code == 401
        async with http.stream("GET", f"/api/v1/jobs/{job.id}/events", params={"access_token": TOKEN}) as events:
            assert events.status_code == 200
            async for line in events.aiter_lines():
                if line.startswith("data:") and json.loads(line[5:])["status"] in ("completed", "failed"):
                    break

    ws_url = base.replace("http://", "ws://") + "/api/v1/ws"
    for url, protocols in ((ws_url, ["vlmnode", f"bearer.{TOKEN}"]), (f"{ws_url}?access_token={TOKEN}", None)):
        async with websockets.connect(url, subprotocols=protocols) as ws:
            await ws.send("What colour?")
            for colour in ("red",) * 5:
                await ws.send(solid_jpeg(colour))
            while not json.loads(await asyncio.wait_for(ws.recv(), 20))["done"]:
                pass
    for url, protocols in ((ws_url, ["vlmnode", f"bearer.{WRONG}"]), (f"{ws_url}?access_token={WRONG}", None)):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, subprotocols=protocols):
                pass
        assert refused.value.response.status_code == 401


async def test_no_process_logs_the_token(settings, webhook, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    env = settings_env(
        settings,
        LOG_LEVEL="DEBUG",
        AUTH_TOKENS=TOKEN,
        GRPC_HOST="127.0.0.1",
        GRPC_PORT=grpc_port,
        HTTP_HOST="127.0.0.1",
        HTTP_PORT=http_port,
        WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",
    )
    programs = {"server": "server.main", "bridge": "server.bridge.main", "worker": "worker.main"}
    started: dict[str, subprocess.Popen] = {}
    try:
        for name, module in programs.items():
            log_file = open(tmp_path / f"{name}.log", "wb")
            started[name] = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log_file,
                                             stderr=log_file)
            log_file.close()
        base = f"http://127.0.0.1:{http_port}"

        async def ready():
            for name, process in started.items():
                assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
            try:
                async with httpx.AsyncClient(trust_env=False) as http:
                    return (await http.get(f"{base}/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, timeout=60, every=0.1)
        await _use_the_token_everywhere(f"127.0.0.1:{grpc_port}", base, webhook.url)
        await asyncio.to_thread(webhook.wait_for, 1)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started.values():
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    texts = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in programs}
    for name, text in texts.items():
        assert TOKEN not in text and WRONG not in text, f"{name} logged a token:\n" + "\n".join(
            line for line in text.splitlines() if TOKEN in line or WRONG in line
        )
    # The dangerous lines were written, blanked: the handshake at DEBUG, uvicorn's WebSocket lines, in our format.
    bridge = [json.loads(line) for line in texts["bridge"].splitlines() if line.startswith("{")]
    said = [line["message"] for line in bridge]
    assert any(m.lower().startswith("< sec-websocket-protocol: vlmnode, bearer.[redacted]") for m in said), said
    assert any(m.startswith("< GET /api/v1/ws?access_token=[redacted]") for m in said), said
    assert any('"WebSocket /api/v1/ws" [accepted]' in m for m in said), said
    assert any('"WebSocket /api/v1/ws" 401' in m for m in said), said
    assert {line["logger"] for line in bridge} >= {"uvicorn.error"}
