"""Bearer tokens and TLS, on the gRPC server and the bridge."""

import asyncio
import dataclasses
import json
import logging
import ssl
import sys

import grpc
import httpx
import pytest
import websockets
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devpeers.images import solid_jpeg
from server.auth import Tokens
from server.bridge.auth import QUERY_TOKEN_REFUSED
from server.grpc_server import NodeServer
from tests.fixtures import create_request, running_bridge
from vlmnode.v1 import inference_pb2 as pb
from vlmnode.v1 import inference_pb2_grpc, jobs_pb2, jobs_pb2_grpc

TOKEN = "s3cr3t-token-for-tests"
AUTH = [("authorization", f"Bearer {TOKEN}")]


def test_tokens_from_settings(settings, tmp_path):
    file = tmp_path / "tokens"
    file.write_text("# one a line\nfrom-file\n\n  spaced  \n")
    tokens = Tokens.from_settings(dataclasses.replace(settings, auth_tokens="a, b", auth_tokens_file=str(file)))
    assert tokens.enabled
    assert all(tokens.accepts(t) for t in ("a", "b", "from-file", "spaced"))
    assert not any(tokens.accepts(t) for t in ("", None, "c", "a, b", "# one a line", "A"))
    assert Tokens.from_settings(settings).accepts(None)  # none configured: open


@pytest.fixture
async def secured(settings, caplog):
    caplog.set_level(logging.INFO)
    node = NodeServer(dataclasses.replace(settings, auth_tokens=f"other,{TOKEN}"))
    await node.start()
    yield node
    await node.stop(grace=0.5)


async def test_grpc_wants_a_token_except_for_health(secured):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == "missing or invalid bearer token"
        watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(id="x"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await watch.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        infer = inference_pb2_grpc.InferenceServiceStub(channel).Infer()
        await infer.write(pb.InferRequest(config=pb.StreamConfig(prompt="hi")))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        assert (await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=AUTH)).jobs == []
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_bridge_wants_the_same_token_and_passes_it_on(secured, caplog):
    tokens = Tokens([TOKEN])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}")
    async with channel, running_bridge(f"127.0.0.1:{secured.port}", tokens=tokens) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
                refused = await http.get("/api/v1/jobs", headers=headers)
                assert refused.status_code == 401 and refused.json() == {"error": "missing or invalid bearer token"}
                assert refused.headers["www-authenticate"] == "Bearer"
            assert (await http.get("/api/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})).json() == []
            # In the query only where a browser cannot set headers: the event streams and the WebSocket.
            refused = await http.get("/api/v1/jobs", params={"access_token": TOKEN})
            assert refused.status_code == 401
            assert refused.json() == {"error": QUERY_TOKEN_REFUSED}
            job = (await jobs_pb2_grpc.JobServiceStub(channel).CreateJob(create_request(), metadata=AUTH)).job
            for method, path in (("GET", f"/api/v1/jobs/{job.id}"), ("POST", f"/api/v1/jobs/{job.id}/cancel"),
                                 ("PUT", f"/api/v1/jobs/{job.id}")):
                refused = await http.request(method, path, params={"access_token": TOKEN})
                assert refused.status_code == 401, (method, path)
            for token, status in ((TOKEN, 200), ("nope", 401)):
                async with http.stream("GET", f"/api/v1/jobs/{job.id}/events", params={"access_token": token}) as events:
                    assert events.status_code == status
                    if status == 200:
                        assert await anext(events.aiter_lines()) == "event: job"
            for open_path in ("/health", "/ready", "/openapi.json"):
                assert (await http.get(open_path)).status_code == 200, open_path

        ws_url = base.replace("http://", "ws://") + "/api/v1/ws"
        for refused_with in (dict(), dict(subprotocols=["vlmnode", "bearer.nope"]), dict(uri=ws_url + "?access_token=nope")):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(refused_with.pop("uri", ws_url), **refused_with):
                    pass
            assert refused.value.response.status_code == 401
        # The token offered alone as a subprotocol is taken, and never echoed back.
        async with websockets.connect(ws_url, subprotocols=[f"bearer.{TOKEN}"]) as ws:
            assert ws.subprotocol is None
            assert "sec-websocket-protocol" not in ws.response.headers
            await ws.send("hello")
        async with websockets.connect(ws_url + f"?access_token={TOKEN}") as ws:
            await ws.send("hello")
        # Browsers cannot set headers: the token rides as a subprotocol.
        async with websockets.connect(ws_url, subprotocols=["vlmnode", f"bearer.{TOKEN}"]) as ws:
            assert ws.subprotocol == "vlmnode"
            await ws.send("What colour?")
            for colour in ("red", "blue", "red", "blue", "red"):
                await ws.send(solid_jpeg(colour))
            while not (message := json.loads(await ws.recv()))["done"]:
                pass
            assert message.get("frames") == ["1", "2", "3", "4", "5"], message
    # The node's and uvicorn's logs never show it (httpx here is the test's own client).
    assert not [r for r in caplog.records if TOKEN in r.getMessage() and not r.name.startswith("httpx")]


async def test_the_node_says_when_it_is_open(node, caplog):
    said = [r.getMessage() for r in caplog.get_records("setup")]
    assert any(m.startswith("authentication is off: anyone who reaches gRPC port") for m in said), said


async def test_tls_on_grpc_and_the_bridge(settings, tls_files):
    settings = dataclasses.replace(settings, tls_cert_file=tls_files["cert.pem"], tls_key_file=tls_files["key.pem"])
    node = NodeServer(settings)
    await node.start()
    ca = open(tls_files["ca.pem"], "rb").read()
    try:
        async with grpc.aio.secure_channel(f"localhost:{node.port}", grpc.ssl_channel_credentials(ca)) as channel:
            assert (await jobs_pb2_grpc.JobServiceStub(channel).ListJobs(jobs_pb2.ListJobsRequest())).jobs == []
        async with grpc.aio.insecure_channel(f"localhost:{node.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await jobs_pb2_grpc.JobServiceStub(plain).ListJobs(jobs_pb2.ListJobsRequest(), timeout=2)
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # The bridge serves HTTPS and reaches the gRPC server over TLS.
        async with running_bridge(f"localhost:{node.port}", settings, root_certificates=ca) as base:
            https = base.replace("http://", "https://").replace("127.0.0.1", "localhost")
            trust = ssl.create_default_context(cafile=tls_files["ca.pem"])
            async with httpx.AsyncClient(base_url=https, verify=trust) as http:
                assert (await http.get("/api/v1/jobs")).json() == []
                assert (await http.get("/ready")).json()["checks"]["grpc"] == "serving"
    finally:
        await node.stop(grace=0.5)


async def test_the_python_client_and_cli_with_tls_and_a_token(settings, tls_files):
    from vlmnode import AsyncClient, VlmNodeError

    secured = dataclasses.replace(
        settings, tls_cert_file=tls_files["cert.pem"], tls_key_file=tls_files["key.pem"], auth_tokens=TOKEN
    )
    node = NodeServer(secured)
    await node.start()
    target = f"localhost:{node.port}"
    try:
        async with AsyncClient(target, ca_file=tls_files["ca.pem"], token=TOKEN) as client:
            assert await client.list_jobs() == []
        async with AsyncClient(target, ca_file=tls_files["ca.pem"]) as stranger:
            with pytest.raises(VlmNodeError) as refused:
                await stranger.list_jobs()
            assert refused.value.code == "UNAUTHENTICATED"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vlmnode.cli", "--target", target, "--ca-file", tls_files["ca.pem"],
            "--token", TOKEN, "--json", "jobs", "list",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()
        assert json.loads(out) == []
    finally:
        await node.stop(grace=0.5)
