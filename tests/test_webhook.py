"""worker/webhook.py against a real HTTP webhook receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time

import httpx
import pytest

from server.errors import PeerRefused, PeerUnavailable
from server.retry import RetryStrategy
from tests.peers.webhook_receiver import WebhookReceiver
from worker.webhook import deliver, encode_body, sign

FAST = RetryStrategy(max_attempts=4, wait=0.01, max_wait=0.05, jitter=0.0)
JOB = "6f1c2f7e-1111-4c36-9a53-0c1d2e3f4a5b"
DATA = {"logs": "id,timestamp,event\n", "temporal_output": {"start": "a", "end": "b"}, "note": "naïve ✓"}


@pytest.fixture
def receiver():
    with WebhookReceiver(secret="s3cret") as r:
        yield r


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as c:
        yield c


async def test_delivered_with_valid_signature(receiver, http):
    await deliver(http, receiver.url, job_id=JOB, data=DATA, error=None, secret="s3cret", retry=FAST)
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
    await deliver(http, receiver.url, job_id=JOB, data=None, error=None, secret="other", retry=FAST)
    assert receiver.wait_for(1)[0].signature_ok is False
    assert len(receiver.bad_signatures) == 1


async def test_no_secret_no_signature_headers(http):
    with WebhookReceiver() as r:
        err = {"code": "no_images", "message": "No data found"}
        await deliver(http, r.url, job_id=JOB, data=None, error=err, secret=None, retry=FAST)
        [d] = r.wait_for(1)
    assert d.json == {"job_id": JOB, "data": None, "error": err}
    assert "x-vlm-signature" not in d.headers and "x-vlm-timestamp" not in d.headers
    assert d.signature_ok is None


async def test_retried_after_two_failures_then_succeeds(receiver, http):
    receiver.fail_next(2, 500)
    await deliver(http, receiver.url, job_id=JOB, data=DATA, error=None, secret="s3cret", retry=FAST)
    assert [a.status for a in receiver.attempts] == [500, 500, 200]
    assert len(receiver.deliveries) == 1
    # same key and body on every attempt, every attempt validly signed
    assert {a.headers["idempotency-key"] for a in receiver.attempts} == {JOB}
    assert len({a.body for a in receiver.attempts}) == 1
    assert all(a.signature_ok for a in receiver.attempts)


async def test_429_and_408_are_retried_honouring_retry_after(receiver, http):
    receiver.retry_after = "0"
    receiver.fail_next(1, 429)
    await deliver(http, receiver.url, job_id=JOB, data=DATA, error=None, secret=None, retry=FAST)
    receiver.retry_after = "3600"  # capped at max_wait (0.05 s)
    receiver.fail_next(1, 408)
    # Retry-After is capped: an hour's wait would hit this bound.
    await asyncio.wait_for(
        deliver(http, receiver.url, job_id=JOB, data=DATA, error=None, secret=None, retry=FAST), 1.0
    )
    assert [a.status for a in receiver.attempts] == [429, 200, 408, 200]


async def test_400_fails_at_once(receiver, http):
    receiver.fail_next(1, 400)
    with pytest.raises(PeerRefused) as e:
        await deliver(http, receiver.url, job_id=JOB, data=DATA, error=None, secret="s3cret", retry=FAST)
    assert e.value.code == "webhook_failed" and not e.value.transient
    assert "400" in e.value.message
    assert len(receiver.attempts) == 1


async def test_down_gives_up_after_max_attempts(receiver, http):
    receiver.mode = "down"
    with pytest.raises(PeerUnavailable) as e:
        await deliver(http, receiver.url, job_id=JOB, data=DATA, error=None, secret="s3cret", retry=FAST)
    assert e.value.code == "webhook_failed" and e.value.transient
    assert "503" in e.value.message and "4 attempts" in e.value.message
    assert [a.status for a in receiver.attempts] == [503] * 4
    assert {a.headers["idempotency-key"] for a in receiver.attempts} == {JOB}


async def test_hanging_receiver_times_out(receiver, http):
    receiver.mode = "hang"
    retry = RetryStrategy(max_attempts=2, wait=0.01, max_wait=0.05)
    try:
        with pytest.raises(PeerUnavailable, match="timed out"):
            await deliver(http, receiver.url, job_id=JOB, data=None, error=None, secret=None, retry=retry, timeout=0.2)
    finally:
        receiver.mode = "ok"


async def test_unreachable_receiver(http):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerUnavailable, match="unreachable") as e:
        await deliver(
            http, f"http://127.0.0.1:{port}/hook", job_id=JOB, data=None, error=None, secret=None, retry=FAST
        )
    assert e.value.code == "webhook_failed"


def test_sign_is_documented_scheme():
    body = json.dumps({"job_id": "j"}).encode()
    want = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, body) == "sha256=" + want
    assert sign("k", "1700000000", body) == sign("k", 1700000000, body)
