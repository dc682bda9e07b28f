"""worker/webhook.py against a real HTTP webhook receiver, and where the node
may send webhooks (server/destinations.py): at create time, at delivery,
over TLS, and through a whole job."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import socket
import ssl
import time
import types

import grpc
import httpx
import pytest

from devpeers.webhook_receiver import WebhookReceiver
from server.destinations import Destinations
from server.errors import BadInput, PeerRefused, PeerUnavailable
from server.grpc_server import NodeServer
from server.retry import RetryStrategy
from tests.fixtures import INPUT, create_request, running_bridge, running_worker, struct, wait_final
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc
from worker.webhook import deliver, encode_body, sign

FAST = RetryStrategy(max_attempts=4, wait=0.01, max_wait=0.05, jitter=0.0)
JOB = "6f1c2f7e-1111-4c36-9a53-0c1d2e3f4a5b"
DATA = {"logs": "id,timestamp,event\n", "temporal_output": {"start": "a", "end": "b"}, "note": "naïve ✓"}
LOOPBACK = Destinations(networks=["127.0.0.0/8"])  # the test receivers listen on 127.0.0.1


@pytest.fixture
def receiver():
    with WebhookReceiver(secret="s3cret") as r:
        yield r


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def dns(monkeypatch):
    """Names that resolve as a test says (name -> list of addresses), through
    the C library's own entry point, which the event loop's resolver calls;
    `dns.asked` counts the look-ups of each name."""
    real = socket.getaddrinfo
    names: dict[str, list] = {}
    asked: dict[str, int] = {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if isinstance(host, str) and host.lower() in names and not flags & socket.AI_NUMERICHOST:
            asked[host.lower()] = asked.get(host.lower(), 0) + 1
            answer = names[host.lower()]
            addresses = answer(asked[host.lower()]) if callable(answer) else answer
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (a, port or 0, 0, 0) if ":" in a else (a, port or 0))
                for a in addresses
            ]
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return types.SimpleNamespace(names=names, asked=asked)


def port_of(peer) -> int:
    return httpx.URL(peer.url).port


async def send(http, url, **kw):
    kw.setdefault("destinations", LOOPBACK)
    kw.setdefault("secret", "s3cret")
    kw.setdefault("retry", FAST)
    await deliver(http, url, job_id=JOB, data=kw.pop("data", DATA), error=kw.pop("error", None), **kw)


# Delivery.


async def test_delivered_with_valid_signature(receiver, http):
    await send(http, receiver.url)
    [d] = receiver.wait_for(1)
    assert d.json == {"job_id": JOB, "data": DATA, "error": None}
    assert d.signature_ok is True
    assert d.headers["idempotency-key"] == JOB
    assert d.headers["content-type"] == "application/json"
    ts = d.headers["x-vlm-timestamp"]
    assert abs(int(ts) - time.time()) < 5
    assert d.headers["x-vlm-signature"] == sign("s3cret", ts, d.body)
    assert d.body == encode_body(JOB, DATA, None)


async def test_wrong_secret_is_flagged(receiver, http):
    await send(http, receiver.url, data=None, secret="other")
    assert receiver.wait_for(1)[0].signature_ok is False
    assert len(receiver.bad_signatures) == 1


async def test_no_secret_no_signature_headers(http):
    with WebhookReceiver() as r:
        err = {"code": "no_images", "message": "No data found"}
        await send(http, r.url, data=None, error=err, secret=None)
        [d] = r.wait_for(1)
    # The error as the original node sent it: its numeric code, ours as `reason`.
    assert d.json == {"job_id": JOB, "data": None, "error": {"code": 400, "reason": "no_images", "message": "No data found"}}
    assert "x-vlm-signature" not in d.headers and "x-vlm-timestamp" not in d.headers
    assert d.signature_ok is None


async def test_retried_after_two_failures_then_succeeds(receiver, http):
    receiver.fail_next(2, 500)
    await send(http, receiver.url)
    assert [a.status for a in receiver.attempts] == [500, 500, 200]
    assert len(receiver.deliveries) == 1
    # same key and body on every attempt, every attempt validly signed
    assert {a.headers["idempotency-key"] for a in receiver.attempts} == {JOB}
    assert len({a.body for a in receiver.attempts}) == 1
    assert all(a.signature_ok for a in receiver.attempts)


async def test_429_and_408_are_retried_honouring_retry_after(receiver, http):
    receiver.retry_after = "0"
    receiver.fail_next(1, 429)
    await send(http, receiver.url, secret=None)
    receiver.retry_after = "3600"  # capped at max_wait (0.05 s)
    receiver.fail_next(1, 408)
    # Retry-After is capped: an hour's wait would hit this bound.
    await asyncio.wait_for(send(http, receiver.url, secret=None), 1.0)
    assert [a.status for a in receiver.attempts] == [429, 200, 408, 200]


async def test_400_fails_at_once_saying_the_status_and_not_the_body(receiver, http):
    receiver.failure_body = "internal detail the receiver let slip"
    receiver.fail_next(1, 400)
    with pytest.raises(PeerRefused) as e:
        await send(http, receiver.url)
    assert e.value.code == "webhook_failed" and not e.value.transient
    assert e.value.message == f"webhook {receiver.url} answered 400; not retrying"
    assert len(receiver.attempts) == 1


async def test_down_gives_up_after_max_attempts(receiver, http):
    receiver.mode = "down"
    receiver.failure_body = "upstream db-7.internal:5432 refused"
    with pytest.raises(PeerUnavailable) as e:
        await send(http, receiver.url)
    assert e.value.code == "webhook_failed" and e.value.transient
    assert e.value.message == f"webhook {receiver.url} answered 503 after 4 attempts"
    assert [a.status for a in receiver.attempts] == [503] * 4
    assert {a.headers["idempotency-key"] for a in receiver.attempts} == {JOB}


async def test_hanging_receiver_times_out(receiver, http):
    receiver.mode = "hang"
    retry = RetryStrategy(max_attempts=2, wait=0.01, max_wait=0.05)
    try:
        with pytest.raises(PeerUnavailable, match="timed out"):
            await send(http, receiver.url, data=None, secret=None, retry=retry, timeout=0.2)
    finally:
        receiver.mode = "ok"


async def test_redirects_are_not_followed(receiver, http):
    with WebhookReceiver() as elsewhere:
        receiver.location = elsewhere.url
        for status in (301, 302, 307, 308):
            receiver.fail_next(1, status)
            with pytest.raises(PeerRefused) as e:
                await send(http, receiver.url)
            assert e.value.message == f"webhook {receiver.url} answered {status}; redirects are not followed"
            assert not e.value.transient
        assert elsewhere.attempts == []


async def test_closed_and_non_http_ports_read_the_same(http):
    """What answers at an address is not for a job's error to tell."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    async def not_http(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    other = server.sockets[0].getsockname()[1]
    messages = []
    try:
        for port in (closed, other):
            with pytest.raises(PeerUnavailable) as e:
                await send(http, f"http://127.0.0.1:{port}/hook", secret=None)
            assert e.value.code == "webhook_failed"
            messages.append(e.value.message.replace(str(port), "PORT"))
    finally:
        server.close()
        await server.wait_closed()
    assert messages == ["webhook http://127.0.0.1:PORT/hook unreachable after 4 attempts"] * 2


def test_sign_is_documented_scheme():
    body = json.dumps({"job_id": "j"}).encode()
    want = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == "sha256=" + want
    assert sign("k", "1700000000", body) == sign("k", 1700000000, body)


# Where webhooks may go.


async def test_a_loopback_receiver_is_refused_by_default(receiver, http):
    for url in (receiver.url, receiver.url.replace("127.0.0.1", "localhost")):
        with pytest.raises(PeerRefused) as e:
            await send(http, url, destinations=None)
        assert e.value.code == "webhook_refused" and not e.value.transient
        assert "WEBHOOK_ALLOW_NETWORKS" in e.value.message
    assert receiver.attempts == []


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["169.254.169.254"], ["10.1.2.3"], ["192.168.0.7"], ["100.64.0.9"], ["0.0.0.0"],
     ["::1"], ["fd00::5"], ["fe80::1"], ["::ffff:127.0.0.1"], ["::ffff:169.254.169.254"]],
)
async def test_a_name_resolving_to_an_internal_address_is_refused(dns, http, addresses):
    dns.names["hooks.example.com"] = addresses
    with pytest.raises(PeerRefused) as e:
        await send(http, "http://hooks.example.com/hook", destinations=None)
    assert e.value.code == "webhook_refused"
    # The caller learns that it was refused, not what the name resolves to.
    assert e.value.message.startswith("webhook host hooks.example.com has no public address")
    assert addresses[0] not in e.value.message


async def test_the_connection_goes_to_the_address_that_was_checked(dns, receiver, http):
    """A name that answers 127.0.0.1 (allowed here) when checked and the
    metadata address a moment later (DNS rebinding): the node connects to
    the address it checked, and asks DNS once, keeping the name in Host."""
    dns.names["hook.test"] = lambda n: ["127.0.0.1"] if n == 1 else ["169.254.169.254"]
    url = f"http://hook.test:{port_of(receiver)}/hook"
    await send(http, url)
    [d] = receiver.wait_for(1)
    assert d.headers["host"] == f"hook.test:{port_of(receiver)}"
    assert dns.asked == {"hook.test": 1}
    # On the next delivery the name answers only the metadata address: refused.
    with pytest.raises(PeerRefused) as e:
        await send(http, url)
    assert e.value.code == "webhook_refused"
    assert len(receiver.attempts) == 1


async def test_only_allowed_addresses_of_a_name_are_used(dns, receiver, http):
    dns.names["hook.test"] = ["10.255.255.1", "127.0.0.1"]
    await send(http, f"http://hook.test:{port_of(receiver)}/hook")
    assert len(receiver.wait_for(1)) == 1


async def test_allowed_hosts_are_not_checked(dns, receiver, http):
    dns.names["hooks.svc.cluster.local"] = ["127.0.0.1"]
    await send(http, f"http://hooks.svc.cluster.local:{port_of(receiver)}/hook",
               destinations=Destinations(hosts=["*.svc.cluster.local"]))
    assert len(receiver.wait_for(1)) == 1
    with pytest.raises(PeerRefused):
        await send(http, receiver.url, destinations=Destinations(hosts=["*.svc.cluster.local"]))


@contextlib.asynccontextmanager
async def tls_receiver(tls_ca, name: str):
    """An HTTPS receiver that answers 204 and records the TLS server name
    and the Host header it was sent."""
    seen = {"sni": [], "host": []}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert(name).configure_cert(context)
    context.sni_callback = lambda sslobj, server_name, ctx: seen["sni"].append(server_name)

    async def answer(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()
            return
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("host:"):
                seen["host"].append(line.split(":", 1)[1].strip())
        length = next((int(line.split(":")[1]) for line in head.decode().split("\r\n")
                       if line.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def tls_ca():
    import trustme

    return trustme.CA()


async def test_over_tls_the_name_is_kept_for_sni_and_the_certificate(dns, tls_ca):
    dns.names["hook.test"] = ["127.0.0.1"]
    trust = ssl.create_default_context()
    tls_ca.configure_trust(trust)
    async with httpx.AsyncClient(verify=trust) as http:
        async with tls_receiver(tls_ca, "hook.test") as (port, seen):
            await send(http, f"https://hook.test:{port}/hook")
            assert seen == {"sni": ["hook.test"], "host": [f"hook.test:{port}"]}
        # A certificate for another name is refused: the check is against the URL's name.
        async with tls_receiver(tls_ca, "other.test") as (port, seen):
            with pytest.raises(PeerUnavailable, match="unreachable"):
                await send(http, f"https://hook.test:{port}/hook")
            assert seen["host"] == []


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://127.1/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://0x7f000001/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://LOCALHOST./hook", "loopback"),
        ("http://api.localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("https://10.0.0.8/hook", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd12::1]/", "private"),
        ("http://0.0.0.0:5432/", "unspecified"),
        ("http://100.64.1.1/", "non-public"),
        ("http://224.0.0.251/", "multicast"),
    ],
)
def test_plainly_internal_urls_are_refused_at_create_time(url, kind):
    with pytest.raises(BadInput) as e:
        Destinations().check_url(url)
    assert e.value.code == "webhook_refused"
    assert e.value.message.startswith(f"input.webhook_url points to a {kind} address")


def test_what_create_time_lets_through():
    default = Destinations()
    for url in ("https://hooks.example.com/x", "http://93.184.216.34/hook", "http://[2606:4700::1111]/",
                "http://internal-name/hook"):  # a name is checked once resolved, at delivery
        default.check_url(url)
    allowed = Destinations(hosts=["hooks.internal", "*.svc.cluster.local"], networks=["127.0.0.0/8", "10.1.0.0/16"])
    for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/", "http://hooks.internal/",
                "http://169.254.169.254.svc.cluster.local/"):
        allowed.check_url(url)
    for url in ("http://10.2.0.1/", "http://169.254.169.254/", "http://[::1]/"):
        with pytest.raises(BadInput):
            allowed.check_url(url)


# Through the node: create time, and a whole job.


@contextlib.asynccontextmanager
async def node_and_jobs(settings):
    node = NodeServer(settings)
    await node.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            yield node, jobs_pb2_grpc.JobServiceStub(channel)
    finally:
        await node.stop(grace=0.5)


def with_webhook(url: str, job_type: str = "vlm_only") -> jobs_pb2.CreateJobRequest:
    data = {**INPUT, "webhook_url": url} if job_type == "task_timing_v1" else {"vlm_prompt": "Describe", "webhook_url": url}
    return create_request(job_type=job_type, input=struct(data))


async def test_the_node_refuses_internal_webhooks_when_jobs_are_created(settings, webhook):
    closed = dataclasses.replace(settings, webhook_allow_networks="", webhook_allow_hosts="")
    async with node_and_jobs(closed) as (node, jobs):
        for url in (webhook.url, "http://localhost:9/hook", "http://169.254.169.254/latest/meta-data/"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await jobs.CreateJob(with_webhook(url))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "where the node does not send webhooks" in refused.value.details()
        created = (await jobs.CreateJob(with_webhook("https://hooks.example.com/x"))).job
        # A retry is held to the same rule.
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=created.id))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await jobs.RetryJob(jobs_pb2.RetryJobRequest(
                id=created.id, job_type="vlm_only", input=struct({"vlm_prompt": "x", "webhook_url": webhook.url})))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Through the bridge: 400 with the same line.
        async with running_bridge(f"127.0.0.1:{node.port}") as base:
            async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
                body = {"job_type": "vlm_only", "query": {"ids": []}, "domain_id": create_request().domain_id,
                        "input": {"vlm_prompt": "x", "webhook_url": "http://[::1]:8080/hook"}}
                response = await client.post("/api/v1/jobs", json=body)
        assert response.status_code == 400
        assert response.json()["error"].startswith("input.webhook_url points to a loopback address")
        assert [j.id for j in (await jobs.ListJobs(jobs_pb2.ListJobsRequest())).jobs] == [created.id]

    opened = dataclasses.replace(settings, webhook_allow_networks="127.0.0.0/8")
    async with node_and_jobs(opened) as (node, jobs):
        assert (await jobs.CreateJob(with_webhook(webhook.url))).job.id
        with pytest.raises(grpc.aio.AioRpcError):  # the metadata address is not in 127.0.0.0/8
            await jobs.CreateJob(with_webhook("http://169.254.169.254/"))


async def test_a_job_whose_webhook_resolves_inside_fails_with_webhook_refused(settings, webhook, dns):
    dns.names["hook.test"] = ["127.0.0.1"]
    url = f"http://hook.test:{port_of(webhook)}/hook"
    closed = dataclasses.replace(settings, webhook_allow_networks="", webhook_allow_hosts="")
    async with node_and_jobs(closed) as (node, jobs), running_worker(closed):
        job = (await jobs.CreateJob(with_webhook(url, "task_timing_v1"))).job  # a name: checked at delivery
        done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.error.code == "webhook_refused"
    assert done.error.message.startswith("webhook host hook.test has no public address")
    assert "127.0.0.1" not in done.error.message
    assert webhook.attempts == []


async def test_a_job_error_says_the_receivers_status_not_its_answer(settings, webhook):
    webhook.failure_body = "Traceback: psycopg.OperationalError at db-7.internal:5432"
    webhook.fail_next(1, 400)
    opened = dataclasses.replace(settings, webhook_allow_networks="127.0.0.0/8")
    async with node_and_jobs(opened) as (node, jobs), running_worker(opened):
        job = (await jobs.CreateJob(with_webhook(webhook.url, "task_timing_v1"))).job
        done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.error.code == "webhook_failed"
    assert done.error.message == f"webhook {webhook.url} answered 400; not retrying"


async def test_the_webhook_url_is_stored_and_delivered_to_as_it_was_validated(settings, webhook):
    """A webhook_url with white space about it is taken without it: stored,
    shown back and delivered to so (not failed five times as unreachable)."""
    opened = dataclasses.replace(settings, webhook_allow_networks="127.0.0.0/8")
    async with node_and_jobs(opened) as (node, jobs), running_worker(opened):
        job = (await jobs.CreateJob(with_webhook(f"  {webhook.url}\n"))).job
        assert job.input["webhook_url"] == webhook.url
        done = await wait_final(jobs, job.id)
        assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
        assert done.input["webhook_url"] == webhook.url
        retried = (await jobs.RetryJob(jobs_pb2.RetryJobRequest(
            id=job.id, job_type="vlm_only", input=struct({"vlm_prompt": "Again", "webhook_url": f"\t{webhook.url} "})
        ))).job
        assert retried.input["webhook_url"] == webhook.url
        again = await wait_final(jobs, job.id)
    assert again.status == jobs_pb2.JOB_STATUS_COMPLETED, again.error
    deliveries = await asyncio.to_thread(webhook.wait_for, 2)
    assert [d.json["job_id"] for d in deliveries] == [job.id, job.id]
    assert all(d.json["error"] is None for d in deliveries)


async def test_a_job_stored_with_white_space_about_its_webhook_url_is_delivered_too(settings, webhook):
    """Jobs stored before their input was stored as validated: the worker
    reads the webhook_url as validation reads it, not as it was stored."""
    opened = dataclasses.replace(settings, webhook_allow_networks="127.0.0.0/8")
    async with node_and_jobs(opened) as (node, jobs), running_worker(opened) as worker:
        request = with_webhook(webhook.url)
        job, _ = await worker.store.create_job(
            job_type="vlm_only", domain_id=request.domain_id, query={"ids": list(request.query["ids"])},
            input={"vlm_prompt": "Describe", "webhook_url": f" {webhook.url}"},
        )
        done = await wait_final(jobs, str(job.id))
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    [delivery] = await asyncio.to_thread(webhook.wait_for, 1)
    assert delivery.json["job_id"] == str(job.id) and delivery.json["error"] is None
