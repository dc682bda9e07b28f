"""Deliver a finished job's result to its webhook.

The request:

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <job_id>              same on every attempt
    X-VLM-Timestamp: <unix seconds>        only when a secret is set
    X-VLM-Signature: sha256=<hex>          only when a secret is set

    {"job_id": "...", "data": {...} | null, "error": {...} | null}

The body bytes are identical on every attempt. The signature is the hex
HMAC-SHA256, keyed with the secret (UTF-8), of the ASCII timestamp, a dot and
the exact body bytes: ``hmac_sha256(secret, f"{ts}.".encode() + body)``.
A receiver recomputes it with `sign(secret, ts, body)` from the headers and
the raw body, compares in constant time, and rejects timestamps too far from
its clock. The timestamp (and so the signature) is renewed on each attempt.

Retries: connect errors, timeouts, 408, 429 and 5xx are retried with the
given RetryStrategy's delays (a Retry-After header, in seconds or as an HTTP
date, replaces the delay, capped at the strategy's max_wait). Other non-2xx
answers fail at once with PeerRefused(code="webhook_failed"); running out of
attempts raises PeerUnavailable(code="webhook_failed").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from email.utils import parsedate_to_datetime

import httpx

from server.errors import PeerRefused, PeerUnavailable
from server.retry import RetryStrategy

__all__ = ["IDEMPOTENCY_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "deliver", "encode_body", "sign"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "X-VLM-Signature"
TIMESTAMP_HEADER = "X-VLM-Timestamp"


def sign(secret: str, ts: int | str, body: bytes) -> str:
    """The X-VLM-Signature value: "sha256=" + hex HMAC-SHA256(secret, f"{ts}." + body)."""
    mac = hmac.new(secret.encode("utf-8"), str(ts).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def encode_body(job_id: str, data: dict | None, error: dict | None) -> bytes:
    return json.dumps(
        {"job_id": job_id, "data": data, "error": error}, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def _retry_after(value: str | None, cap: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


async def deliver(
    http: httpx.AsyncClient,
    url: str,
    *,
    job_id: str,
    data: dict | None,
    error: dict | None,
    secret: str | None,
    retry: RetryStrategy,
    timeout: float = 10.0,
) -> None:
    """POST {job_id, data, error} to url, retrying transient failures; see the module docstring."""
    body = encode_body(job_id, data, error)
    attempt = 0
    last = ""
    while True:
        attempt += 1
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: job_id}
        if secret:
            ts = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = sign(secret, ts, body)
        wait: float | None = None
        try:
            resp = await http.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as e:
            last = f"timed out ({type(e).__name__})"
        except httpx.TransportError as e:
            last = f"unreachable ({str(e) or type(e).__name__})"
        else:
            status = resp.status_code
            if 200 <= status < 300:
                return
            text = resp.text[:200].strip()
            last = f"answered {status}" + (f" ({text})" if text else "")
            if not (status in (408, 429) or status >= 500):
                raise PeerRefused(f"webhook {url} {last}; not retrying", code="webhook_failed")
            wait = _retry_after(resp.headers.get("retry-after"), retry.max_wait)
        if not retry.should_retry(attempt):
            raise PeerUnavailable(f"webhook {url} {last} after {attempt} attempts", code="webhook_failed")
        await asyncio.sleep(wait if wait is not None else retry.delay(attempt))
