"""A fake posemesh network: Auki API, DDS and one domain server over real HTTP.

A model of the real one, read from its client's source (aukilabs/posemesh 1.5.3,
core/domain-http) and docs/posemesh-domain-data.md, and never kinder: each
behaviour it models names the file it comes from. One uvicorn server in a
background thread serves all three on one port under path prefixes:

    api_url            = base + "/api-svc"     (login, refresh, domains-access-token)
    dds_url            = base + "/dds"         (per-domain auth)
    domain_server_url  = base + "/domain-svc"  (domain data)

Domains hold what real ones hold: photos beside sensor logs, scans and
manifests (add_item, add_sensor_log, add_scan, add_manifest), some of them
large: `Generated(size, pattern)` bytes are made on the fly, never held whole.

Test knobs (all settable while the server runs):

    fail_next(n, status=503, server="domain")  next n requests to that server fail
    mode = "ok" | "hang" | "broken_multipart" | "size_mismatch" | "expire_tokens"
        (applies to the domain server; "expire_tokens" refuses the next token
        with 403 "invalid domain access token" then goes back to "ok")
    refuse_domain_tokens(n=1)     the same for the next n domain requests
    chunk_size = None | int       stream answers in chunks of this size (None: 64 KiB)
    token_ttl, domain_token_ttl   token lifetimes in seconds (domain tokens: None = token_ttl)
    line_ends = "crlf" | "lf"     multipart line ends ("lf": LF-only, which the real client reads)
    closing_boundary = True       False: an answer stops after its last part's bytes
    forbid_domain(domain_id)      DDS answers 403 for it
    revoke_all_tokens()           every token issued so far becomes invalid
    read_only = False             True: DDS grants tokens that may read but not write, so
                                  every upload is refused with 403 "invalid domain access token"
    refuse_domain_tokens(n, writes_only=True)   the refusal above for the next n uploads only
    fail_uploads(n, status=503, stored=False)   the next n uploads fail with that status;
                                  stored=True: stored first, the answer lost on its way back (a
                                  gateway's 502/504 after the server wrote the item)

Records: counters (logins, refreshes, dds_tokens, dds_grants, downloads,
metadata_requests, raw_downloads, uploads, domain_requests), domain_queries
(parsed) and domain_query_strings (raw) of data GETs, posts (path, body,
headers of each API/DDS POST), upload_requests (method, headers and parts of
each upload whose token was taken), bytes_served (ids of the items whose
bytes went out, once per answer) and bytes_sent (body bytes of data answers).

Run standalone for a demo:

    python -m devpeers.fake_posemesh --port 8090 --demo
    python -m devpeers.fake_posemesh --port 8090 --seed-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import io
import json
import secrets
import sys
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from devpeers.http_server import Peer, ThreadedServer

DEMO_DOMAIN_ID = "23d60e61-6978-4f6b-a59d-9ffa027755fc"
DEMO_EMAIL = "demo@vlm-node.local"
DEMO_PASSWORD = "demo-password"
DEMO_SCAN = "2025-08-10_16-54-40"

FORBIDDEN_NAME_CHARS = set(';!?<>[]{}()/\\"$#@*^&|~%=+')
MAX_ITEM_BYTES = 10 * 1024 * 1024
MAX_REQUEST_BYTES = 100 * 1024 * 1024
STREAM_CHUNK = 64 * 1024  # bytes per write of an answer when chunk_size is None
GENERATED_PIECE = 1024 * 1024  # bytes made at a time for a Generated item
MAX_IDS = 100  # per data request: 400 beyond (docs/posemesh-domain-data.md, assumed)

# aukilabs/posemesh: core/domain-http/bindings/javascript/tests/basic.test.ts (status 403, this text)
INVALID_DOMAIN_TOKEN = "invalid domain access token"

MODES = ("ok", "hang", "broken_multipart", "size_mismatch", "expire_tokens")


# --------------------------------------------------------------------------- #
# Tokens and items
# --------------------------------------------------------------------------- #


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Generated:
    """An item's bytes made on the fly: `pattern` repeated to `size` bytes, never held whole."""

    size: int
    pattern: bytes = b"\x00"

    def __post_init__(self) -> None:
        if self.size < 0 or not self.pattern:
            raise ValueError("a Generated item needs a size >= 0 and a non-empty pattern")

    def pieces(self) -> Iterator[bytes]:
        block = self.pattern * max(1, GENERATED_PIECE // len(self.pattern))  # whole patterns: pieces join up
        left = self.size
        while left > 0:
            piece = block[:left]
            left -= len(piece)
            yield piece


@dataclass
class _Item:
    id: str
    domain_id: str
    name: str
    data_type: str
    data: bytes | Generated
    created_at: datetime
    updated_at: datetime

    @property
    def size(self) -> int:
        return self.data.size if isinstance(self.data, Generated) else len(self.data)

    def pieces(self) -> Iterator[bytes]:
        if isinstance(self.data, Generated):
            yield from self.data.pieces()
        elif self.data:
            yield self.data

    def holds(self, marker: bytes) -> bool:
        if isinstance(self.data, Generated):  # a marker may span two repeats of the pattern
            return marker in self.data.pattern * (len(marker) // len(self.data.pattern) + 2)
        return marker in self.data

    def meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "domain_id": self.domain_id,
            "name": self.name,
            "data_type": self.data_type,
            "size": self.size,
            "created_at": _rfc3339(self.created_at),
            "updated_at": _rfc3339(self.updated_at),
        }


@dataclass(frozen=True)
class PostSeen:
    """One POST to the Auki API or DDS as it arrived."""

    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class PartSeen:
    """One part of an upload: its headers (lower-cased names), Content-Disposition parameters, bytes."""

    headers: dict[str, str]
    disposition: dict[str, str]
    data: bytes


@dataclass(frozen=True)
class UploadSeen:
    """One upload (POST or PUT .../data) whose token was taken, as it arrived, whatever was answered."""

    method: str
    headers: dict[str, str]
    parts: list[PartSeen]


class _HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def accel_csv(rows: int = 20) -> bytes:
    """An accelerometer log as a DMT scan uploads it (Accel.csv: aukilabs/posemesh:
    core/domain/examples/browser/src/index.js, core/compute-node/src/storage/client.rs)."""
    lines = ["timestamp,x,y,z"]
    lines += [f"{1754816080.0 + n / 100:.2f},{0.01 * n:.3f},-9.81,{0.002 * n:.3f}" for n in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def refined_scan_zip() -> bytes:
    """A small refined scan, a zip (aukilabs/posemesh: core/compute-node/tests/domain_client_http.rs)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("refined/sfm/points3D.txt", "# 3D point list\n1 0.1 0.2 0.3 255 255 255 0.5\n")
        zf.writestr("refined/sfm/images.txt", "# image list\n")
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# The fake
# --------------------------------------------------------------------------- #


class FakePosemesh(Peer):
    def __init__(
        self,
        *,
        email: str = DEMO_EMAIL,
        password: str = DEMO_PASSWORD,
        token_ttl: int = 3600,
        refresh_ttl: int = 24 * 3600,
        client_id: str | None = None,
        app_key: str | None = None,
        app_secret: str | None = None,
        port: int = 0,
    ) -> None:
        self.email = email
        self.password = password
        self.token_ttl = token_ttl
        self.refresh_ttl = refresh_ttl
        self.domain_token_ttl: int | None = None  # what DDS gives domain tokens; None: token_ttl
        self.expected_client_id = client_id  # None: any non-empty value
        self.app_key = app_key
        self.app_secret = app_secret

        self._lock = threading.Lock()
        self._signing_key = secrets.token_bytes(32)
        self._live_refresh: set[str] = set()
        self._domains: dict[str, dict[str, _Item]] = {}
        self._forbidden: set[str] = set()
        self._fail: dict[str, list[int]] = {"api": [], "dds": [], "domain": []}
        self.domain_server_id = str(uuid.uuid4())
        self.organization_id = str(uuid.uuid4())

        self.mode = "ok"
        self.chunk_size: int | None = None
        self.line_ends = "crlf"
        self.closing_boundary = True
        self._refuse_tokens = 0
        self._refuse_write_tokens = 0
        self._fail_uploads: list[tuple[int, bool]] = []  # (status, stored first)
        self.read_only = False

        self.logins = 0
        self.login_failures = 0
        self.refreshes = 0
        self.dds_tokens = 0
        self.dds_grants = 0
        self.downloads = 0
        self.metadata_requests = 0
        self.raw_downloads = 0
        self.uploads = 0
        self.domain_requests = 0
        self.domain_queries: list[dict[str, str]] = []
        self.domain_query_strings: list[str] = []
        self.posts: list[PostSeen] = []
        self.upload_requests: list[UploadSeen] = []
        self.bytes_served: list[str] = []
        self.bytes_sent = 0
        self.client_ids_seen: set[str] = set()

        self._http = ThreadedServer(self._build_app(), port=port, name="fake-posemesh")

    # ------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return self.base_url + "/api-svc"

    @property
    def dds_url(self) -> str:
        return self.base_url + "/dds"

    @property
    def domain_server_url(self) -> str:
        return self.base_url + "/domain-svc"

    # ------------------------------------------------------------ test helpers

    def add_domain(self, domain_id: str) -> str:
        domain_id = str(uuid.UUID(domain_id))
        with self._lock:
            self._domains.setdefault(domain_id, {})
        return domain_id

    def add_item(
        self,
        domain_id: str,
        name: str,
        data: bytes | Generated,
        data_type: str = "jpg",
        created_at: datetime | None = None,
    ) -> str:
        """Store an item; `Generated(size, pattern)` for one too large to hold."""
        domain_id = str(uuid.UUID(domain_id))
        now = datetime.now(UTC)
        created = created_at or now
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        content = data if isinstance(data, Generated) else bytes(data)
        with self._lock:
            items = self._domains.setdefault(domain_id, {})
            if any(i.name == name for i in items.values()):
                raise ValueError(f"duplicate name {name!r} in domain {domain_id}")
            item = _Item(str(uuid.uuid4()), domain_id, name, data_type, content, created, created)
            items[item.id] = item
        return item.id

    # Non-image items as a DMT scan stores them: name = data type + "_" + scan name
    # (aukilabs/posemesh: core/domain/examples/browser/src/index.js, getDataType).

    def add_sensor_log(self, domain_id: str, scan: str = DEMO_SCAN, data_type: str = "dmt_accel_csv") -> str:
        return self.add_item(domain_id, f"{data_type}_{scan}", accel_csv(), data_type)

    def add_manifest(self, domain_id: str, scan: str = DEMO_SCAN, doc: Any = None) -> str:
        doc = doc if doc is not None else {"scan": scan, "frames": 0, "portals": []}
        return self.add_item(domain_id, f"dmt_manifest_json_{scan}", json.dumps(doc).encode(), "dmt_manifest_json")

    def add_scan(self, domain_id: str, name: str = f"scan_{DEMO_SCAN}", size: int | None = None) -> str:
        """A refined_scan_zip (core/compute-node/src/storage/client.rs); `size` makes a generated one
        of that many bytes (real scans run to hundreds of MiB), else a small real zip."""
        data: bytes | Generated = refined_scan_zip() if size is None else Generated(size, b"PK\x03\x04scan")
        return self.add_item(domain_id, name, data, "refined_scan_zip")

    def items(self, domain_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [i.meta() for i in self._domains.get(domain_id, {}).values()]

    def item_data(self, domain_id: str, item_id: str) -> bytes:
        with self._lock:
            return b"".join(self._domains[domain_id][item_id].pieces())

    def forbid_domain(self, domain_id: str) -> None:
        with self._lock:
            self._forbidden.add(str(uuid.UUID(domain_id)))

    def fail_next(self, n: int, status: int = 503, server: str = "domain") -> None:
        if server not in self._fail:
            raise ValueError(f"server must be one of {sorted(self._fail)}")
        with self._lock:
            self._fail[server] = [status] * n

    def refuse_domain_tokens(self, n: int = 1, *, writes_only: bool = False) -> None:
        """The next n domain requests (uploads only: `writes_only`) refuse their token as an
        expired one is refused."""
        with self._lock:
            if writes_only:
                self._refuse_write_tokens = n
            else:
                self._refuse_tokens = n

    def fail_uploads(self, n: int, status: int = 503, *, stored: bool = False) -> None:
        """The next n uploads with a good token answer `status`; `stored`: after storing them."""
        with self._lock:
            self._fail_uploads = [(status, stored)] * n

    def revoke_all_tokens(self) -> None:
        with self._lock:
            self._signing_key = secrets.token_bytes(32)
            self._live_refresh.clear()

    # ------------------------------------------------------------ tokens

    def _mint(self, claims: dict[str, Any], ttl: int) -> str:
        now = int(time.time())
        payload = {**claims, "iat": now, "exp": now + int(ttl), "jti": uuid.uuid4().hex}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        sig = _b64(hmac.new(self._signing_key, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return f"{head}.{body}.{sig}"

    def _verify(self, token: str, typ: str) -> dict[str, Any]:
        try:
            head, body, sig = token.split(".")
            want = _b64(hmac.new(self._signing_key, f"{head}.{body}".encode(), hashlib.sha256).digest())
            if not hmac.compare_digest(sig, want):
                raise ValueError("bad signature")
            claims = json.loads(_unb64(body))
        except Exception:
            raise _HTTPError(401, "invalid token") from None
        if claims.get("typ") != typ:
            raise _HTTPError(401, "wrong token type")
        if int(claims.get("exp", 0)) <= time.time():
            raise _HTTPError(401, "token expired")
        return claims

    @staticmethod
    def _bearer(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _HTTPError(401, "missing bearer token")
        return value.strip()

    def _check_client_id(self, request: Request) -> None:
        cid = request.headers.get("posemesh-client-id", "").strip()
        if not cid:
            raise _HTTPError(400, "missing posemesh-client-id header")
        if self.expected_client_id is not None and cid != self.expected_client_id:
            raise _HTTPError(400, "unknown posemesh-client-id")
        self.client_ids_seen.add(cid)

    def _take_failure(self, server: str) -> None:
        with self._lock:
            if self._fail[server]:
                status = self._fail[server].pop(0)
                raise _HTTPError(status, f"injected failure {status}")

    async def _json_body(self, request: Request) -> Any:
        """The POST's JSON; no body at all reads as {} (auth.rs and discovery.rs send none)."""
        raw = await request.body()
        self.posts.append(PostSeen(request.url.path, raw, dict(request.headers)))
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise _HTTPError(400, "body is not JSON") from None

    # ------------------------------------------------------------ app

    def _build_app(self) -> Starlette:
        def wrap(handler: Any) -> Any:
            async def endpoint(request: Request) -> Response:
                try:
                    return await handler(request)
                except _HTTPError as e:
                    return PlainTextResponse(e.text, status_code=e.status)

            return endpoint

        data_path = "/domain-svc/api/v1/domains/{domain_id}/data"
        return Starlette(
            routes=[
                Route("/api-svc/user/login", wrap(self._login), methods=["POST"]),
                Route("/api-svc/user/refresh", wrap(self._refresh), methods=["POST"]),
                Route("/api-svc/service/domains-access-token", wrap(self._dds_token), methods=["POST"]),
                Route("/dds/api/v1/domains/{domain_id}/auth", wrap(self._dds_auth), methods=["POST"]),
                Route(data_path, wrap(self._data), methods=["GET", "POST", "PUT"]),
                Route(data_path + "/{item_id}", wrap(self._one_item), methods=["GET"]),
            ]
        )

    # ------------------------------------------------------------ Auki API

    async def _login(self, request: Request) -> Response:
        self.logins += 1
        body = await self._json_body(request)
        self._check_client_id(request)
        self._take_failure("api")
        if not isinstance(body, dict) or body.get("email") != self.email or body.get("password") != self.password:
            self.login_failures += 1
            raise _HTTPError(401, "invalid email or password")
        return JSONResponse(self._user_pair())

    def _user_pair(self) -> dict[str, str]:
        access = self._mint({"typ": "user", "sub": self.email}, self.token_ttl)
        refresh = self._mint({"typ": "refresh", "sub": self.email}, self.refresh_ttl)
        with self._lock:
            self._live_refresh.add(refresh)
        return {"access_token": access, "refresh_token": refresh}

    async def _refresh(self, request: Request) -> Response:
        self.refreshes += 1
        await self._json_body(request)
        self._check_client_id(request)
        self._take_failure("api")
        token = self._bearer(request)
        self._verify(token, "refresh")
        with self._lock:
            if token not in self._live_refresh:  # rotated: each refresh token works once
                raise _HTTPError(401, "refresh token already used")
            self._live_refresh.discard(token)
        return JSONResponse(self._user_pair())

    async def _dds_token(self, request: Request) -> Response:
        self.dds_tokens += 1
        await self._json_body(request)
        self._check_client_id(request)
        self._take_failure("api")
        auth = request.headers.get("authorization", "")
        read_only = False
        if auth.lower().startswith("basic "):
            try:
                key, _, sec = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except Exception:
                raise _HTTPError(401, "bad basic credentials") from None
            if self.app_key is None or key != self.app_key or sec != self.app_secret:
                raise _HTTPError(401, "bad app credentials")
            read_only = True
        else:
            self._verify(self._bearer(request), "user")
        return JSONResponse({"access_token": self._mint({"typ": "dds_service", "ro": read_only}, self.token_ttl)})

    # ------------------------------------------------------------ DDS

    async def _dds_auth(self, request: Request) -> Response:
        """Any posemesh-sdk-version and posemesh-gateway-mac (empty from a browser) are taken, as 1.4+
        send them (aukilabs/posemesh: core/domain-http/src/discovery.rs, auth_domain)."""
        self.dds_grants += 1
        await self._json_body(request)
        self._check_client_id(request)
        self._take_failure("dds")
        claims = self._verify(self._bearer(request), "dds_service")
        domain_id = request.path_params["domain_id"]
        with self._lock:
            known = domain_id in self._domains
            forbidden = domain_id in self._forbidden
        if not known:
            raise _HTTPError(404, "domain not found")
        if forbidden:
            raise _HTTPError(403, "domain access forbidden")
        url = self.domain_server_url
        token = self._mint(
            {
                "typ": "domain",
                "iss": "dds",
                "domain_id": domain_id,
                "aud": [url],
                "ro": bool(claims.get("ro", False) or self.read_only),
            },
            self.token_ttl if self.domain_token_ttl is None else self.domain_token_ttl,
        )
        return JSONResponse(
            {
                "id": domain_id,
                "name": f"fake domain {domain_id[:8]}",
                "organization_id": self.organization_id,
                "domain_server_id": self.domain_server_id,
                "redirect_url": None,
                "domain_server": {
                    "id": self.domain_server_id,
                    "organization_id": self.organization_id,
                    "name": "fake-domain-server",
                    "url": url,
                },
                "access_token": token,
            }
        )

    # ------------------------------------------------------------ domain server

    async def _domain_gate(self, request: Request, *, check_client_id: bool) -> dict[str, Any]:
        """Failure knobs, then token checks. Returns the domain token's claims."""
        self.domain_requests += 1
        if check_client_id:
            self._check_client_id(request)
        self._take_failure("domain")
        if self.mode == "hang":
            await self._http.hang(lambda: self.mode == "hang")
            raise _HTTPError(503, "was hanging")
        # Every refused domain token, expired, bad, for another domain or read-only on a write,
        # is 403 "invalid domain access token" (aukilabs/posemesh: bindings/javascript/tests/basic.test.ts).
        write = request.method in ("POST", "PUT")
        with self._lock:
            refuse = self._refuse_tokens > 0 or self.mode == "expire_tokens"
            refuse = refuse or (write and self._refuse_write_tokens > 0)
            self._refuse_tokens = max(0, self._refuse_tokens - 1)
            if write:
                self._refuse_write_tokens = max(0, self._refuse_write_tokens - 1)
            if self.mode == "expire_tokens":
                self.mode = "ok"
        if refuse:
            raise _HTTPError(403, INVALID_DOMAIN_TOKEN)
        try:
            claims = self._verify(self._bearer(request), "domain")
        except _HTTPError:
            raise _HTTPError(403, INVALID_DOMAIN_TOKEN) from None
        domain_id = request.path_params["domain_id"]
        if claims.get("domain_id") != domain_id or self.domain_server_url not in claims.get("aud", []):
            raise _HTTPError(403, INVALID_DOMAIN_TOKEN)
        with self._lock:
            if domain_id not in self._domains:
                raise _HTTPError(404, "domain not found")
        return claims

    async def _data(self, request: Request) -> Response:
        if request.method == "GET":
            await self._domain_gate(request, check_client_id=True)
            return self._get_data(request)
        # Uploads need no posemesh-client-id: the real client sends none on them (aukilabs/posemesh:
        # core/domain-http/src/domain_data.rs, create_v1 and update_v1 set only the bearer token).
        claims = await self._domain_gate(request, check_client_id=False)
        if claims.get("ro"):  # a token that may read only: basic.test.ts "should not upload domain data"
            raise _HTTPError(403, INVALID_DOMAIN_TOKEN)
        return await self._upload(request)

    def _select(self, request: Request) -> list[_Item]:
        domain_id = request.path_params["domain_id"]
        # Decoded, so ids=a,b and ids=a%2Cb read alike: clients since 1.0 write literal commas, 0.1.x
        # wrote %2C through reqwest's query() (aukilabs/posemesh: core/domain-http/src/domain_data.rs).
        q = request.query_params
        self.domain_queries.append(dict(q))
        self.domain_query_strings.append(request.scope["query_string"].decode("latin-1"))
        ids = [i for i in q.get("ids", "").split(",") if i]
        if len(ids) > MAX_IDS:
            raise _HTTPError(400, f"too many ids (max {MAX_IDS})")
        name = q.get("name")
        data_type = q.get("data_type")
        with self._lock:
            items = list(self._domains[domain_id].values())
        if ids:
            wanted = set(ids)
            items = [i for i in items if i.id in wanted]
        if name is not None:
            items = [i for i in items if i.name == name]
        if data_type is not None:
            items = [i for i in items if i.data_type == data_type]
        return items

    def _get_data(self, request: Request) -> Response:
        items = self._select(request)
        accept = request.headers.get("accept", "")
        if "application/json" in accept:
            self.metadata_requests += 1
            return JSONResponse({"data": [i.meta() for i in items]})
        if "multipart/form-data" not in accept:
            raise _HTTPError(406, "accept multipart/form-data or application/json")
        self.downloads += 1
        boundary = self._boundary(items)
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        return StreamingResponse(self._send(self._multipart(items, boundary)), headers=headers)

    @staticmethod
    def _boundary(items: list[_Item]) -> str:
        # 60 hex digits: Go's mime/multipart random boundary, as in the live-server sample in
        # aukilabs/posemesh: core/domain-http/src/domain_data.rs (tests).
        while True:
            boundary = secrets.token_hex(30)
            if not any(i.holds(("--" + boundary).encode()) for i in items):
                return boundary

    def _multipart(self, items: list[_Item], boundary: str) -> Iterator[tuple[bytes, str | None]]:
        """The answer in pieces, each with the id of the item whose bytes it holds (None: framing).

        As Go's mime/multipart Writer writes it (the server's source is not public; its 60-hex
        boundary is Go's): "--B" before the first part, EOL "--B" before the others, headers in
        sorted order, and on Close EOL "--B--" EOL, even with no part, which is what an empty
        answer looks like. closing_boundary=False is a server that never
        closes: the body stops after its last part's bytes (an empty body when nothing matched);
        the real client reads parts by `size` and does without the closing delimiter
        (aukilabs/posemesh: core/domain-http/src/domain_data.rs, handle_domain_data_stream).
        line_ends="lf" writes LF where CRLF belongs, which that client also reads (find_headers_end).
        """
        eol = "\n" if self.line_ends == "lf" else "\r\n"
        for n, item in enumerate(items):
            size = item.size + (7 if self.mode == "size_mismatch" and n == 0 else 0)
            disposition = (
                f'form-data; name="{item.name}"; data-type="{item.data_type}"; id="{item.id}"; '
                f'domain-id="{item.domain_id}"; size="{size}"; created-at="{_rfc3339(item.created_at)}"; '
                f'updated-at="{_rfc3339(item.updated_at)}"'
            )
            yield (
                f"{eol if n else ''}--{boundary}{eol}Content-Disposition: {disposition}{eol}"
                f"Content-Type: application/octet-stream{eol}{eol}"
            ).encode(), None
            if self.mode == "broken_multipart" and n == len(items) - 1:  # cut in the middle of the last item
                yield from _first_bytes(item, item.size // 2)
                return
            for piece in item.pieces():
                yield piece, item.id
        closing = f"{eol}--{boundary}--{eol}".encode()
        if self.mode == "broken_multipart":  # no items: cut the closing delimiter itself
            yield closing[: len(boundary)], None
        elif self.closing_boundary:
            yield closing, None

    async def _send(self, pieces: Iterable[tuple[bytes, str | None]]) -> AsyncIterator[bytes]:
        """Write the pieces in chunks of chunk_size, counting what the server took: bytes_sent, and
        in bytes_served each item whose first byte went out."""
        starts: deque[tuple[int, str]] = deque()  # where each item's bytes begin in the body
        begun: set[str] = set()
        made = sent = 0

        def body() -> Iterator[bytes]:
            nonlocal made
            for piece, item_id in pieces:
                if item_id is not None and item_id not in begun:
                    begun.add(item_id)
                    starts.append((made, item_id))
                made += len(piece)
                yield piece

        for chunk in _chunks(body(), self.chunk_size or STREAM_CHUNK):
            yield chunk  # back here once the server has taken it
            sent += len(chunk)
            self.bytes_sent += len(chunk)
            while starts and starts[0][0] < sent:
                self.bytes_served.append(starts.popleft()[1])
            # Let the server see a client that went away (it stops the answer then, as a real
            # server stops on a reset connection); uvicorn's send does not wait once it is gone.
            await asyncio.sleep(0)

    async def _one_item(self, request: Request) -> Response:
        await self._domain_gate(request, check_client_id=True)
        domain_id = request.path_params["domain_id"]
        with self._lock:
            item = self._domains[domain_id].get(request.path_params["item_id"])
        if item is None:
            raise _HTTPError(404, "data not found")
        if request.query_params.get("raw", "").lower() == "true":
            self.raw_downloads += 1
            pieces = ((piece, item.id) for piece in item.pieces())
            return StreamingResponse(self._send(pieces), media_type="application/octet-stream")
        return JSONResponse({"data": [item.meta()]})

    async def _upload(self, request: Request) -> Response:
        """POST creates, PUT updates, one item per part, as the real client writes them (aukilabs/posemesh:
        core/domain-http/src/domain_data.rs, upload_v1, create_v1, update_v1, write_create_body,
        write_update_body): a create's part names the item in its Content-Disposition, `name` and
        `data-type`; an update's part names it by `id` (1.x writes `id` alone, 0.1.x `name="<id>"; id`).
        The answer is {"data": [metadata of each part]} (ListDomainDataMetadata there). A name is
        unique in its domain: creating it again is 409, as the compute node expects
        (core/compute-node/src/storage/client.rs map_status, tests/storage_errors.rs); updating an
        id the domain does not hold is 404 (assumed). Limits: docs/posemesh-domain-data.md. No
        GET /api/v1/info is served: the real client then sends the whole body in one request
        (get_upload_info_v1 in domain_data.rs), as servers before the chunked upload take it."""
        domain_id = request.path_params["domain_id"]
        ctype, params = parse_options_header(request.headers.get("content-type", ""))
        if ctype != b"multipart/form-data" or b"boundary" not in params:
            raise _HTTPError(400, "expected multipart/form-data with a boundary")
        if int(request.headers.get("content-length", "0") or 0) > MAX_REQUEST_BYTES:
            raise _HTTPError(413, "request too large")

        parts: list[dict[str, Any]] = []
        cur: dict[str, Any] = {}
        hfield = bytearray()
        hvalue = bytearray()

        def on_part_begin() -> None:
            cur.clear()
            cur.update(headers={}, data=bytearray())

        def on_header_field(d: bytes, s: int, e: int) -> None:
            hfield.extend(d[s:e])

        def on_header_value(d: bytes, s: int, e: int) -> None:
            hvalue.extend(d[s:e])

        def on_header_end() -> None:
            cur["headers"][bytes(hfield).decode("latin-1").lower()] = bytes(hvalue).decode("latin-1")
            hfield.clear()
            hvalue.clear()

        def on_part_data(d: bytes, s: int, e: int) -> None:
            cur["data"].extend(d[s:e])
            if len(cur["data"]) > MAX_ITEM_BYTES:
                raise _HTTPError(413, "item too large")

        def on_part_end() -> None:
            headers = dict(cur["headers"])
            _, disp = parse_options_header(headers.get("content-disposition", ""))
            opts = {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in disp.items()}
            parts.append(PartSeen(headers, opts, bytes(cur["data"])))

        parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
            },
        )
        total = 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > MAX_REQUEST_BYTES:
                    raise _HTTPError(413, "request too large")
                parser.write(chunk)
            parser.finalize()
        except _HTTPError:
            raise
        except Exception as e:
            raise _HTTPError(400, f"bad multipart body: {e}") from None
        if parser.state != MultipartState.END:
            raise _HTTPError(400, "truncated multipart body")

        self.upload_requests.append(UploadSeen(request.method, dict(request.headers), parts))

        now = datetime.now(UTC)
        out: list[_Item] = []
        with self._lock:
            items = self._domains[domain_id]
            names = {i.name for i in items.values()}
            for part in parts:
                opts = part.disposition
                if request.method == "POST":
                    name, dtype = opts.get("name", ""), opts.get("data-type", "")
                    if not name or not dtype:
                        raise _HTTPError(400, "each part needs name and data-type")
                    if FORBIDDEN_NAME_CHARS & set(name + dtype):
                        raise _HTTPError(400, "forbidden character in name or data-type")
                    if name in names:
                        raise _HTTPError(409, f"data named {name!r} already exists")
                    names.add(name)
                    out.append(_Item(str(uuid.uuid4()), domain_id, name, dtype, part.data, now, now))
                else:
                    item_id = opts.get("id", "")
                    if not item_id:
                        raise _HTTPError(400, "each part needs an id")
                    existing = items.get(item_id)
                    if existing is None:
                        raise _HTTPError(404, f"data {item_id} not found")
                    dtype = opts.get("data-type", existing.data_type)
                    out.append(_Item(existing.id, domain_id, existing.name, dtype, part.data, existing.created_at, now))
            with_failure = self._fail_uploads.pop(0) if self._fail_uploads else None
            if with_failure is None or with_failure[1]:  # stored, unless it fails before
                for item in out:
                    items[item.id] = item
        if with_failure is not None:
            raise _HTTPError(with_failure[0], f"injected upload failure {with_failure[0]}")
        self.uploads += 1
        return JSONResponse({"data": [i.meta() for i in out]})


def _first_bytes(item: _Item, n: int) -> Iterator[tuple[bytes, str | None]]:
    for piece in item.pieces():
        if n <= 0:
            return
        yield piece[:n], item.id
        n -= len(piece)


def _chunks(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The pieces' bytes again, in chunks of exactly `size` (the last may be shorter)."""
    pending = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        if pending:
            take = size - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending.clear()
        while len(view) >= size:
            yield bytes(view[:size])
            view = view[size:]
        pending += view
    if pending:
        yield bytes(pending)


# --------------------------------------------------------------------------- #
# Standalone demo
# --------------------------------------------------------------------------- #


# The demo's photos: a shelf every DEMO_PHOTO_INTERVAL seconds, restocked with a green box in photos
# DEMO_TASK[0] to DEMO_TASK[1] (1-based). The fake Ollama captions a photo by its main colour, so those
# photos alone are "mostly green" and the demo's task spans them.
DEMO_TASK = (3, 6)
DEMO_PHOTO_INTERVAL = 5  # seconds between two photos, in their names
DEMO_FIRST_PHOTO = datetime(2025, 8, 10, 16, 54, 0)  # when the first was taken (its name says when)


def demo_images(n: int = 8) -> list[tuple[str, str, bytes]]:
    from PIL import Image, ImageDraw

    first, last = DEMO_TASK
    out = []
    for i in range(1, n + 1):
        if i < first:
            scene, colour = "the shelf, empty", (120, 120, 120)  # grey
        elif i <= last:
            scene, colour = "restocking the green box", (40, 160, 60)
        else:
            scene, colour = "the shelf, restocked", (40, 80, 200)  # blue
        img = Image.new("RGB", (320, 240), colour)
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 200, 320, 215), fill=(255, 255, 255))  # the shelf board
        if first <= i <= last:  # the box rises onto the shelf
            top = 200 - 25 * (i - first + 1)
            draw.rectangle((120, top, 200, 200), fill=(20, 110, 40))
        draw.text((10, 10), f"demo photo {i}: {scene}", fill=(0, 0, 0))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        taken = DEMO_FIRST_PHOTO + timedelta(seconds=(i - 1) * DEMO_PHOTO_INTERVAL)
        out.append((taken.strftime("photo_%Y%m%d_%H%M%S"), "jpg", buf.getvalue()))
    return out


def _dir_images(seed_dir: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for path in sorted(seed_dir.iterdir()):
        ext = path.suffix.lower().lstrip(".")
        if not path.is_file() or ext not in ("jpg", "jpeg", "png"):
            continue
        name = "".join("_" if c in FORBIDDEN_NAME_CHARS else c for c in path.stem)
        out.append((name, ext, path.read_bytes()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fake posemesh (Auki API + DDS + domain server) for demos")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--seed-dir", type=Path, help="load jpg/png files from this directory")
    ap.add_argument("--demo", action="store_true",
                    help="seed generated demo JPEGs and a scan's CSV, manifest and zip when no --seed-dir")
    ap.add_argument("--domain-id", default=DEMO_DOMAIN_ID)
    ap.add_argument("--email", default=DEMO_EMAIL)
    ap.add_argument("--password", default=DEMO_PASSWORD)
    ap.add_argument("--token-ttl", type=int, default=3600)
    args = ap.parse_args(argv)

    fake = FakePosemesh(email=args.email, password=args.password, token_ttl=args.token_ttl, port=args.port)
    domain_id = fake.add_domain(args.domain_id)
    if args.seed_dir:
        images = _dir_images(args.seed_dir)
    elif args.demo:
        images = demo_images()
    else:
        images = []
    for name, dtype, data in images:
        fake.add_item(domain_id, name, data, data_type=dtype)
    if args.demo and not args.seed_dir:  # a real domain holds a scan's other data beside the photos
        fake.add_sensor_log(domain_id)
        fake.add_manifest(domain_id)
        fake.add_scan(domain_id)
    fake.start()
    print(f"fake posemesh on {fake.base_url} with {len(fake.items(domain_id))} items in domain {domain_id}")
    print("use:")
    print(f"  export API_URL={fake.api_url}")
    print(f"  export DDS_URL={fake.dds_url}")
    print(f"  export POSEMESH_EMAIL={fake.email}")
    print(f"  export POSEMESH_PASSWORD={fake.password}")
    print(f"  DOMAIN_ID={domain_id}")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
