"""A webhook receiver over real HTTP, for tests and demos.

Every request is recorded in `attempts`; the ones answered 2xx also go to
`deliveries`. Knobs (settable while running):

    fail_next(n, status=500)      answer the next n requests with status
    mode = "ok" | "down" | "hang"  "down" answers 503, "hang" never answers
    secret                         verify X-VLM-Signature / X-VLM-Timestamp;
                                   each record gets signature_ok True/False
                                   (None without a secret)
    reject_bad_signatures          answer 401 to a bad signature (default: flag only)
    failure_body                   what a failure answer says (default "receiver answered <status>")
    location                       a Location header on failure answers (a 3xx redirect with fail_next)

Wait for deliveries with `wait_for(n, timeout)`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from devpeers.http_server import Peer, ThreadedServer

MODES = ("ok", "down", "hang")


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any  # parsed body, None if not JSON
    signature_ok: bool | None  # None when the receiver has no secret
    status: int  # what we answered


def _expected_signature(secret: str, ts: str, body: bytes) -> str:
    # Independent of worker.webhook.sign on purpose: this checks the documented scheme.
    return "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookReceiver(Peer):
    def __init__(self, *, secret: str | None = None, reject_bad_signatures: bool = False) -> None:
        self.secret = secret
        self.reject_bad_signatures = reject_bad_signatures
        self.mode = "ok"
        self.retry_after: str | None = None  # sent with failure answers when set
        self.failure_body: str | None = None
        self.location: str | None = None
        self.attempts: list[Delivery] = []
        self.deliveries: list[Delivery] = []
        self._fail: list[int] = []
        self._cond = threading.Condition()
        self._http = ThreadedServer(
            Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST", "PUT", "GET"])]),
            name="webhook-receiver",
        )

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return self.base_url + "/hook"

    # ------------------------------------------------------------ knobs

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._cond:
            self._fail = [status] * n

    @property
    def bad_signatures(self) -> list[Delivery]:
        with self._cond:
            return [d for d in self.attempts if d.signature_ok is False]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Delivery]:
        """Block until at least n successful deliveries; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.deliveries) >= n, timeout):
                raise TimeoutError(f"got {len(self.deliveries)} of {n} webhook deliveries in {timeout}s")
            return list(self.deliveries)

    def wait_for_attempts(self, n: int, timeout: float = 5.0) -> list[Delivery]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.attempts) >= n, timeout):
                raise TimeoutError(f"got {len(self.attempts)} of {n} webhook attempts in {timeout}s")
            return list(self.attempts)

    # ------------------------------------------------------------ handler

    def _check_signature(self, headers: dict[str, str], body: bytes) -> bool | None:
        if self.secret is None:
            return None
        ts = headers.get("x-vlm-timestamp", "")
        got = headers.get("x-vlm-signature", "")
        if not ts.isdigit() or not got:
            return False
        return hmac.compare_digest(got, _expected_signature(self.secret, ts, body))

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        sig_ok = self._check_signature(headers, body)

        if self.mode == "hang":
            await self._http.hang(lambda: self.mode == "hang")
        with self._cond:
            status = self._fail.pop(0) if self._fail else 200
        if self.mode == "down":
            status = 503
        if sig_ok is False and self.reject_bad_signatures and status == 200:
            status = 401

        record = Delivery(request.url.path, headers, body, parsed, sig_ok, status)
        with self._cond:
            self.attempts.append(record)
            if 200 <= status < 300:
                self.deliveries.append(record)
            self._cond.notify_all()
        if status == 200:
            return JSONResponse({"ok": True})
        extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        if self.location is not None:
            extra["Location"] = self.location
        body = self.failure_body if self.failure_body is not None else f"receiver answered {status}"
        return PlainTextResponse(body, status_code=status, headers=extra)
