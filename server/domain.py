"""The one module over the posemesh domain: login, tokens, metadata, downloads.

Wire contract: docs/posemesh-domain-data.md. Three servers, three tokens:

    Auki API (API_URL)  user access + refresh token, then the DDS token
    DDS (DDS_URL)       per-domain access token and the domain server's URL
    domain server       serves the data with the domain token

Tokens are JWTs; we read their integer `exp` (never the signature) and reuse a
token while it has more than `token_margin` seconds left. The user token is
refreshed with the refresh token before falling back to a full login; the DDS
answer is cached per domain. One asyncio.Lock guards all token state, so
concurrent callers wait for a single login/grant instead of racing. A 401 from
a server is retried once with a fresh token from the layer above; a refused
login is remembered for `login_cooldown` seconds so callers fail fast instead
of hammering the API.

Errors: transport errors, timeouts, 408/429/5xx and broken bodies raise
PeerUnavailable (transient) naming the server; definite refusals raise
PeerRefused with codes `auth_failed`, `domain_forbidden`, `domain_not_found`,
`no_credits`; a bad query or domain id raises BadInput.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from server.errors import BadInput, PeerRefused, PeerUnavailable, shown

__all__ = [
    "BATCH_SIZE",
    "FORBIDDEN_CHARS",
    "IMAGE_TYPES",
    "DataItem",
    "DomainClient",
    "DomainQuery",
    "capture_time",
    "images_only",
    "validate_domain_id",
    "validate_query",
]

BATCH_SIZE = 100  # ids per request
MAX_IDS = 10_000
MAX_FILTER_LEN = 256
FORBIDDEN_CHARS = frozenset(';!?<>[]{}()/\\"$#@*^&|~%=+')
IMAGE_TYPES = frozenset({"jpg", "jpeg", "png"})
DEFAULT_MAX_ITEM_BYTES = 64 * 1024 * 1024

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_STAMP_RE = re.compile(r"(?<!\d)(\d{8})_(\d{6})(?!\d)")
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")

API = "posemesh Auki API"
DDS = "posemesh DDS"
DOMAIN = "posemesh domain server"


# --------------------------------------------------------------------------- #
# Values
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class DataItem:
    id: str
    domain_id: str
    name: str
    data_type: str
    size: int
    created_at: datetime
    updated_at: datetime
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DomainQuery:
    """A validated job query. `ids == ()` means "all data in the domain"."""

    ids: tuple[str, ...] = ()
    name: str | None = None
    data_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ids": list(self.ids)}
        if self.name is not None:
            out["name"] = self.name
        if self.data_type is not None:
            out["data_type"] = self.data_type
        return out

    def batches(self) -> list[dict[str, str]]:
        """Query parameters for each request, at most BATCH_SIZE ids each."""
        base: dict[str, str] = {}
        if self.name is not None:
            base["name"] = self.name
        if self.data_type is not None:
            base["data_type"] = self.data_type
        if not self.ids:
            return [base]
        return [
            {"ids": ",".join(self.ids[i : i + BATCH_SIZE]), **base} for i in range(0, len(self.ids), BATCH_SIZE)
        ]


def validate_domain_id(domain_id: Any) -> str:
    if not isinstance(domain_id, str) or not _UUID_RE.fullmatch(domain_id.strip()):
        raise BadInput(f"domain_id must be a UUID, got {domain_id!r}")
    return domain_id.strip().lower()


def _check_filter(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"query.{key} must be a string, got {type(value).__name__}")
    if not value:
        raise BadInput(f"query.{key} must not be empty (leave it out to match any)")
    if len(value) > MAX_FILTER_LEN:
        raise BadInput(f"query.{key} is too long (max {MAX_FILTER_LEN} characters)")
    bad = sorted(set(value) & FORBIDDEN_CHARS)
    if bad:
        raise BadInput(f"query.{key} contains forbidden characters: {' '.join(bad)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadInput(f"query.{key} contains control characters")
    return value


def validate_query(query: Any) -> DomainQuery:
    """Check a job's `query` ({"ids": [...], "name"?, "data_type"?}); raise BadInput."""
    if isinstance(query, DomainQuery):
        return query
    if not isinstance(query, Mapping):
        raise BadInput(f"query must be an object, got {type(query).__name__}")
    unknown = sorted(set(query) - {"ids", "name", "data_type"})
    if unknown:
        raise BadInput(f"query has unknown keys: {', '.join(map(shown, unknown))} (allowed: ids, name, data_type)")
    if "ids" not in query:
        raise BadInput("query.ids is required (use [] for all data in the domain)")
    ids = query["ids"]
    if not isinstance(ids, list | tuple):
        raise BadInput(f"query.ids must be a list of strings, got {type(ids).__name__}")
    if len(ids) > MAX_IDS:
        raise BadInput(f"query.ids has {len(ids)} entries (max {MAX_IDS})")
    seen: dict[str, None] = {}
    for n, item_id in enumerate(ids):
        if not isinstance(item_id, str):
            raise BadInput(f"query.ids[{n}] must be a string, got {type(item_id).__name__}")
        if not _UUID_RE.fullmatch(item_id):
            raise BadInput(f"query.ids[{n}] is not a UUID: {item_id[:64]!r}")
        seen.setdefault(item_id.lower(), None)
    return DomainQuery(
        ids=tuple(seen),
        name=_check_filter("name", query.get("name")),
        data_type=_check_filter("data_type", query.get("data_type")),
    )


def images_only(items: Iterable[DataItem]) -> list[DataItem]:
    return [i for i in items if i.data_type.lower().lstrip(".") in IMAGE_TYPES]


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _name_stamp(name: str) -> datetime | None:
    for date_part, time_part in reversed(_STAMP_RE.findall(name)):
        try:
            return datetime.strptime(date_part + time_part, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def capture_time(item: DataItem, exif_time: datetime | None) -> datetime:
    """EXIF DateTimeOriginal, else a YYYYMMDD_HHMMSS stamp in the name, else created_at (UTC)."""
    if exif_time is not None:
        return _utc(exif_time)
    stamp = _name_stamp(item.name)
    if stamp is not None:
        return stamp
    return _utc(item.created_at)


def _parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str) or not value:
        raise PeerUnavailable(f"{DOMAIN} sent an item without {what}")
    text = _FRACTION_RE.sub(r"\1", value.strip())
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        return _utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):  # OverflowError: a date that leaves the calendar in UTC
        raise PeerUnavailable(f"{DOMAIN} sent an unreadable {what}: {value[:64]!r}") from None


def _item_from_meta(meta: Mapping[str, Any], domain_id: str, data: bytes | None = None) -> DataItem:
    try:
        item_id = str(meta["id"])
        size = int(meta["size"])
        name = str(meta["name"])
        data_type = str(meta["data_type"])
    except (KeyError, TypeError, ValueError) as e:
        raise PeerUnavailable(f"{DOMAIN} sent incomplete item metadata: missing or bad {e}") from None
    return DataItem(
        id=item_id,
        domain_id=str(meta.get("domain_id") or domain_id),
        name=name,
        data_type=data_type,
        size=size,
        created_at=_parse_time(meta.get("created_at"), "created_at"),
        updated_at=_parse_time(meta.get("updated_at"), "updated_at"),
        data=data,
    )


# --------------------------------------------------------------------------- #
# Multipart
# --------------------------------------------------------------------------- #


class _MultipartItems:
    """Streaming multipart/form-data parser (python-multipart) producing DataItems."""

    def __init__(self, boundary: bytes, domain_id: str, max_item_bytes: int) -> None:
        self.items: list[DataItem] = []
        self._domain_id = domain_id
        self._max = max_item_bytes
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data = bytearray()
        self._error: str | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._on_header_end,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()

    def _on_header_end(self) -> None:
        # Header bytes are UTF-8 on the wire; keep them as latin-1 text so the
        # parameter parser round-trips every byte, and decode values later.
        self._headers[bytes(self._field).decode("latin-1").strip().lower()] = bytes(self._value).decode("latin-1")
        self._field.clear()
        self._value.clear()

    def _on_part_data(self, d: bytes, s: int, e: int) -> None:
        self._data.extend(d[s:e])
        if len(self._data) > self._max:
            raise _Broken(f"an item is larger than {self._max} bytes")

    def _on_part_end(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        meta = {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in params.items()}
        for key in ("id", "name", "data-type", "size"):
            if key not in meta:
                raise _Broken(f"a part has no {key!r} in its Content-Disposition")
        try:
            size = int(meta["size"])
        except ValueError:
            raise _Broken(f"item {shown(meta['id'])} has a non-numeric size {meta['size']!r}") from None
        if size != len(self._data):
            raise _Broken(f"item {shown(meta['id'])} has {len(self._data)} bytes but its size says {size}")
        try:
            item = _item_from_meta(
                {
                    "id": meta["id"],
                    "domain_id": meta.get("domain-id"),
                    "name": meta["name"],
                    "data_type": meta["data-type"],
                    "size": size,
                    "created_at": meta.get("created-at"),
                    "updated_at": meta.get("updated-at"),
                },
                self._domain_id,
                bytes(self._data),
            )
        except PeerUnavailable as e:
            raise _Broken(e.message) from None
        self.items.append(item)
        self._data = bytearray()

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except _Broken:
            raise
        except Exception as e:  # python-multipart's MultipartParseError and friends
            raise _Broken(str(e) or type(e).__name__) from None

    def finish(self) -> list[DataItem]:
        self._parser.finalize()
        if self._parser.state != MultipartState.END:
            raise _Broken("the body ended before the closing boundary (truncated)")
        return self.items


class _Broken(Exception):
    pass


# --------------------------------------------------------------------------- #
# Tokens
# --------------------------------------------------------------------------- #


def _jwt_exp(token: Any, server: str) -> float:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(int(claims["exp"]))
    except Exception:
        raise PeerUnavailable(f"{server} sent a token that is not a JWT with an integer exp") from None


@dataclass
class _Token:
    value: str
    exp: float


@dataclass
class _Grant:
    url: str
    token: _Token


# --------------------------------------------------------------------------- #
# Client
# --------------------------------------------------------------------------- #


class DomainClient:
    def __init__(
        self,
        api_url: str,
        dds_url: str,
        *,
        client_id: str = "vlm-node",
        email: str,
        password: str,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
        token_margin: float = 5.0,
        login_cooldown: float = 30.0,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        self._api = api_url.rstrip("/")
        self._dds = dds_url.rstrip("/")
        self._client_id = client_id
        self._email = email
        self._password = password
        self._timeout = httpx.Timeout(timeout)
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=self._timeout)
        self._margin = token_margin
        self._login_cooldown = login_cooldown
        self._max_item_bytes = max_item_bytes

        self._lock = asyncio.Lock()
        self._access: _Token | None = None
        self._refresh: _Token | None = None
        self._dds_token: _Token | None = None
        self._grants: dict[str, _Grant] = {}
        self._login_refused_at: float | None = None

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> DomainClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ public

    async def list_items(self, domain_id: str, query: Mapping[str, Any] | DomainQuery) -> list[DataItem]:
        """Metadata only (Accept: application/json), all batches, de-duplicated by id."""
        return await self._items(domain_id, query, multipart=False)

    async def download(self, domain_id: str, query: Mapping[str, Any] | DomainQuery) -> list[DataItem]:
        """Items with their bytes (Accept: multipart/form-data), all batches, de-duplicated by id."""
        return await self._items(domain_id, query, multipart=True)

    async def _items(self, domain_id: str, query: Mapping[str, Any] | DomainQuery, *, multipart: bool) -> list[DataItem]:
        domain_id = validate_domain_id(domain_id)
        out: dict[str, DataItem] = {}
        for params in validate_query(query).batches():
            for item in await self._request_items(domain_id, params, multipart=multipart):
                out.setdefault(item.id, item)
        return list(out.values())

    # ------------------------------------------------------------ domain server

    async def _request_items(self, domain_id: str, params: dict[str, str], *, multipart: bool) -> list[DataItem]:
        stale: str | None = None
        for attempt in (1, 2):
            grant = await self._grant(domain_id, stale=stale)
            url = f"{grant.url}/api/v1/domains/{quote(domain_id)}/data"
            headers = {
                "Authorization": f"Bearer {grant.token.value}",
                "Accept": "multipart/form-data" if multipart else "application/json",
                "posemesh-client-id": self._client_id,
            }
            try:
                async with self._http.stream(
                    "GET", url, params=params, headers=headers, timeout=self._timeout
                ) as resp:
                    if resp.status_code == 401 and attempt == 1:
                        await resp.aread()
                        stale = grant.token.value
                        continue
                    if resp.status_code != 200:
                        body = await _short_body(resp)
                        raise _status_error(DOMAIN, resp.status_code, body, domain_id)
                    if multipart:
                        return await self._read_multipart(resp, domain_id)
                    return await self._read_metadata(resp, domain_id)
            except httpx.TimeoutException as e:
                raise PeerUnavailable(f"{DOMAIN} at {grant.url} timed out ({type(e).__name__})") from None
            except httpx.TransportError as e:
                raise PeerUnavailable(f"{DOMAIN} at {grant.url} is unreachable: {_reason(e)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_multipart(self, resp: httpx.Response, domain_id: str) -> list[DataItem]:
        ctype, params = parse_options_header(resp.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            await resp.aread()
            raise PeerUnavailable(
                f"domain server sent a broken multipart body: content type {resp.headers.get('content-type')!r}"
            )
        parser = _MultipartItems(boundary, domain_id, self._max_item_bytes)
        try:
            try:
                async for chunk in resp.aiter_bytes():
                    parser.write(chunk)
            except httpx.RemoteProtocolError as e:
                raise _Broken(f"connection closed mid-body ({_reason(e)})") from None
            return parser.finish()
        except _Broken as e:
            raise PeerUnavailable(f"domain server sent a broken multipart body: {e}") from None

    async def _read_metadata(self, resp: httpx.Response, domain_id: str) -> list[DataItem]:
        raw = await resp.aread()
        try:
            doc = json.loads(raw)
            entries = doc["data"]
            if not isinstance(entries, list):
                raise TypeError("data is not a list")
        except (ValueError, KeyError, TypeError) as e:
            raise PeerUnavailable(f"{DOMAIN} sent malformed metadata JSON: {e}") from None
        if any(not isinstance(m, Mapping) for m in entries):
            raise PeerUnavailable(f"{DOMAIN} sent malformed metadata JSON: an entry is not an object")
        return [_item_from_meta(m, domain_id) for m in entries]

    # ------------------------------------------------------------ tokens

    def _fresh(self, token: _Token | None) -> bool:
        return token is not None and token.exp - time.time() > self._margin

    async def _grant(self, domain_id: str, *, stale: str | None = None) -> _Grant:
        """The cached DDS answer for a domain, renewed when close to expiry or known stale."""
        grant = self._grants.get(domain_id)
        if grant is not None and grant.token.value != stale and self._fresh(grant.token):
            return grant
        async with self._lock:
            grant = self._grants.get(domain_id)
            if grant is not None and grant.token.value != stale and self._fresh(grant.token):
                return grant  # someone else renewed it while we waited
            grant = await self._dds_auth(domain_id)
            self._grants[domain_id] = grant
            return grant

    async def _dds_auth(self, domain_id: str) -> _Grant:
        """POST {DDS}/api/v1/domains/{id}/auth; a 401 gets one retry with a new DDS token. Lock held."""
        url = f"{self._dds}/api/v1/domains/{quote(domain_id)}/auth"
        for attempt in (1, 2):
            token = await self._dds_service_token(force=attempt == 2)
            resp = await self._post(DDS, url, bearer=token.value)
            if resp.status_code == 401 and attempt == 1:
                continue
            if resp.status_code != 200:
                raise _status_error(DDS, resp.status_code, resp.text[:200], domain_id)
            doc = _json(resp, DDS)
            try:
                server_url = str(doc["domain_server"]["url"]).rstrip("/")
                access = str(doc["access_token"])
            except (KeyError, TypeError):
                raise PeerUnavailable(f"{DDS} answer lacks domain_server.url or access_token") from None
            if not server_url.startswith(("http://", "https://")):
                raise PeerUnavailable(f"{DDS} sent an unusable domain server url {server_url[:100]!r}")
            return _Grant(server_url, _Token(access, _jwt_exp(access, DDS)))
        raise PeerRefused(f"{DDS} refused a fresh token (401)", code="auth_failed")

    async def _dds_service_token(self, *, force: bool) -> _Token:
        """The DDS token from the API; a 401 gets one retry with a renewed user token. Lock held."""
        if not force and self._fresh(self._dds_token):
            assert self._dds_token is not None
            return self._dds_token
        self._dds_token = None
        url = f"{self._api}/service/domains-access-token"
        for attempt in (1, 2):
            access = await self._user_access(force=attempt == 2)
            resp = await self._post(API, url, bearer=access.value)
            if resp.status_code == 401 and attempt == 1:
                continue
            if resp.status_code != 200:
                raise _status_error(API, resp.status_code, resp.text[:200], None)
            value = _token_field(_json(resp, API), "access_token", API)
            self._dds_token = _Token(value, _jwt_exp(value, API))
            return self._dds_token
        raise PeerRefused(f"{API} refused a fresh user token for the DDS token (401)", code="auth_failed")

    async def _user_access(self, *, force: bool) -> _Token:
        """User access token: cached, else refreshed, else a full login. Lock held."""
        if not force and self._fresh(self._access):
            assert self._access is not None
            return self._access
        self._access = None
        if self._refresh is not None and self._fresh(self._refresh):
            refresh, self._refresh = self._refresh, None  # rotates: single use
            resp = await self._post(API, f"{self._api}/user/refresh", bearer=refresh.value)
            if resp.status_code == 200:
                self._store_pair(_json(resp, API))
                assert self._access is not None
                return self._access
            if resp.status_code not in (401, 403):
                raise _status_error(API, resp.status_code, resp.text[:200], None)
            # refresh token rejected: fall back to a full login
        return await self._login()

    async def _login(self) -> _Token:
        if self._login_refused_at is not None and time.monotonic() - self._login_refused_at < self._login_cooldown:
            raise _login_refused()
        resp = await self._post(
            API, f"{self._api}/user/login", json_body={"email": self._email, "password": self._password}
        )
        if resp.status_code in (401, 403):
            self._login_refused_at = time.monotonic()
            raise _login_refused()
        if resp.status_code != 200:
            raise _status_error(API, resp.status_code, resp.text[:200], None)
        self._login_refused_at = None
        self._store_pair(_json(resp, API))
        assert self._access is not None
        return self._access

    def _store_pair(self, doc: Any) -> None:
        access = _token_field(doc, "access_token", API)
        refresh = _token_field(doc, "refresh_token", API)
        self._access = _Token(access, _jwt_exp(access, API))
        self._refresh = _Token(refresh, _jwt_exp(refresh, API))

    async def _post(
        self, server: str, url: str, *, bearer: str | None = None, json_body: Any = None
    ) -> httpx.Response:
        headers = {"posemesh-client-id": self._client_id, "Content-Type": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        body = json.dumps(json_body if json_body is not None else {}).encode()
        try:
            return await self._http.post(url, content=body, headers=headers, timeout=self._timeout)
        except httpx.TimeoutException as e:
            raise PeerUnavailable(f"{server} at {url} timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise PeerUnavailable(f"{server} at {url} is unreachable: {_reason(e)}") from None


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _login_refused() -> PeerRefused:
    return PeerRefused("posemesh login refused: check POSEMESH_EMAIL/POSEMESH_PASSWORD", code="auth_failed")


def _reason(e: Exception) -> str:
    return str(e) or type(e).__name__


def _json(resp: httpx.Response, server: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise PeerUnavailable(f"{server} sent a non-JSON answer (status {resp.status_code})") from None


def _token_field(doc: Any, key: str, server: str) -> str:
    value = doc.get(key) if isinstance(doc, Mapping) else None
    if not isinstance(value, str) or not value:
        raise PeerUnavailable(f"{server} answer lacks {key}")
    return value


async def _short_body(resp: httpx.Response) -> str:
    try:
        raw = await resp.aread()
    except httpx.HTTPError:
        return ""
    return raw[:200].decode("utf-8", "replace")


def _status_error(server: str, status: int, body: str, domain_id: str | None) -> Exception:
    detail = f" ({body.strip()})" if body and body.strip() else ""
    where = f" for domain {domain_id}" if domain_id else ""
    if status == 408 or status == 429 or status >= 500:
        return PeerUnavailable(f"{server} answered {status}{where}{detail}")
    if status == 402:
        return PeerRefused(f"{server} answered 402{where}: no credits left{detail}", code="no_credits")
    if status == 403:
        return PeerRefused(f"{server} forbids access{where} (403){detail}", code="domain_forbidden")
    if status == 404 and domain_id is not None:
        return PeerRefused(f"{server} does not know domain {domain_id} (404){detail}", code="domain_not_found")
    if status == 401:
        return PeerRefused(f"{server} refused our token (401){where}{detail}", code="auth_failed")
    return PeerRefused(f"{server} answered {status}{where}{detail}")
