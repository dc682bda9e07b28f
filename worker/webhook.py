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

Where: only where `Destinations` (server/destinations.py) lets the node go.
Each attempt resolves the receiver's name once, keeps only the addresses the
node may reach (public ones, unless WEBHOOK_ALLOW_NETWORKS or
WEBHOOK_ALLOW_HOSTS allow more), and connects to one of those: the URL's
host goes on in `Host` and in TLS (SNI, and the certificate is checked
against it), so what was checked is what is reached. A receiver with no such
address fails at once with PeerRefused(code="webhook_refused").

Redirects are not followed: a 3xx fails the delivery at once. A webhook
receiver has no reason to redirect a POST; following one would re-check a
second destination chosen by the receiver (and a 301/302/303 would turn the
delivery into a GET without its body). GitHub and Stripe do not follow them
either.

Retries: connect errors, timeouts, 408, 429 and 5xx are retried with the
given RetryStrategy's delays (a Retry-After header, in seconds or as an HTTP
date, replaces the delay, capped at the strategy's max_wait). Other non-2xx
answers fail at once with PeerRefused(code="webhook_failed"); running out of
attempts raises PeerUnavailable(code="webhook_failed").

What an error says: the receiver's status code, "timed out" or
"unreachable", never the receiver's body nor the network error's words, so
a job's error cannot be used to read, or to tell apart, what answers at an
address (an open port, a closed one, something that does not speak HTTP).
The worker's log has the details.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from server.destinations import Destinations
from server.errors import PeerRefused, PeerUnavailable, original_error
from server.retry import RetryStrategy

log = logging.getLogger(__name__)

__all__ = ["IDEMPOTENCY_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "deliver", "encode_body", "sign"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "X-VLM-Signature"
TIMESTAMP_HEADER = "X-VLM-Timestamp"


def sign(secret: str, ts: int | str, body: bytes) -> str:
    """The X-VLM-Signature value: "sha256=" + hex HMAC-SHA256(secret, f"{ts}." + body)."""
    mac = hmac.new(secret.encode("utf-8"), str(ts).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def encode_body(job_id: str, data: dict | None, error: dict | None) -> bytes:
    """The delivery's body; `error` ({code, message}, the node's code) goes
    out in the original's form: a numeric code, ours as `reason`."""
    if error is not None:
        error = original_error(error["code"], error["message"])
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


def _pinned(http: httpx.AsyncClient, url: httpx.URL, address: str, **kw: Any) -> httpx.Request:
    """The request for `url`, sent to `address`: the name stays in Host and in TLS."""
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    headers = {**kw.pop("headers"), "Host": url.netloc.decode("ascii")}
    return http.build_request("POST", url.copy_with(host=address), headers=headers, extensions=extensions, **kw)


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
    destinations: Destinations | None = None,
) -> None:
    """POST {job_id, data, error} to url, retrying transient failures; see the
    module docstring. `destinations` says where the node may send it (default:
    public addresses only)."""
    destinations = destinations or Destinations()
    body = encode_body(job_id, data, error)
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL:
        raise PeerRefused("webhook_url is not a URL the node can send to", code="webhook_failed") from None
    port = target.port or (443 if target.scheme == "https" else 80)
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
        resp = None
        try:
            addresses = await destinations.resolve(target.raw_host.decode("ascii"), port, timeout=timeout)
        except PeerUnavailable:  # the name does not resolve (now)
            last, addresses = "does not resolve", []
        for address in addresses:  # the next one only when this one cannot be reached at all
            try:
                # Streamed, and closed unread: the receiver's body is neither kept nor shown.
                resp = await http.send(
                    _pinned(http, target, address, content=body, headers=headers, timeout=timeout),
                    follow_redirects=False,
                    stream=True,
                )
                await resp.aclose()
                break
            except httpx.TimeoutException as e:
                log.info("webhook %s (%s), attempt %d: timed out (%s)", url, address, attempt, type(e).__name__)
                last = "timed out"
                break
            except httpx.TransportError as e:
                log.info("webhook %s (%s), attempt %d: %s", url, address, attempt, str(e) or type(e).__name__)
                last = "unreachable"
        if resp is not None:
            status = resp.status_code
            if 200 <= status < 300:
                return
            last = f"answered {status}"
            if 300 <= status < 400:
                raise PeerRefused(f"webhook {url} {last}; redirects are not followed", code="webhook_failed")
            if not (status in (408, 429) or status >= 500):
                raise PeerRefused(f"webhook {url} {last}; not retrying", code="webhook_failed")
            wait = _retry_after(resp.headers.get("retry-after"), retry.max_wait)
        if not retry.should_retry(attempt):
            raise PeerUnavailable(f"webhook {url} {last} after {attempt} attempts", code="webhook_failed")
        await asyncio.sleep(wait if wait is not None else retry.delay(attempt))
