"""The one module over the posemesh domain: login, tokens, metadata, downloads.

Wire contract: docs/posemesh-domain-data.md. Three servers, three tokens:

    Auki API (API_URL)  user access + refresh token, then the DDS token
    DDS (DDS_URL)       per-domain access token and the domain server's URL
    domain server       serves the data with the domain token

Tokens are JWTs; we read their integer `exp` (never the signature) and reuse a
token while it has more than `token_margin` seconds left (60 s, as the real
client), or for the first half of its life when it lives less than twice that.
The user token is refreshed with the refresh token before falling back to a
full login; the DDS answer is cached per domain. One asyncio.Lock guards all
token state, so concurrent callers wait for a single login/grant instead of
racing. A refused token (401, or 403 from the domain server) is retried once
with a fresh token from the layer above; a refused login is remembered for
`login_cooldown` seconds so callers fail fast instead of hammering the API.

Reading a domain: `list_items` (metadata only), then `is_image` / `images_only`,
then `download_ids` for the bytes of exactly the items wanted, so sensor logs,
scans and manifests beside the photos are never downloaded.

Writing one: `upload_item` stores bytes as the item of a given name, replacing
that item's bytes by id when the domain already holds it (PUT) and creating
it otherwise (POST), so a retried upload never makes a second item.

Errors: transport errors, timeouts, 408/429/5xx and broken bodies raise
PeerUnavailable (transient) naming the server; definite refusals raise
PeerRefused with codes `auth_failed`, `domain_forbidden`, `domain_not_found`,
`no_credits` (and for uploads `item_exists`, `too_large`); a bad query, domain
id, item name or data type raises BadInput.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from python_multipart.multipart import parse_options_header

from server.config import Settings
from server.errors import BadInput, PeerRefused, PeerUnavailable, listed, quoted, shown

__all__ = [
    "BATCH_SIZE",
    "FORBIDDEN_CHARS",
    "DataItem",
    "DomainClient",
    "DomainQuery",
    "TOKEN_MARGIN",
    "capture_time",
    "images_only",
    "is_image",
    "validate_domain_id",
    "validate_query",
]

BATCH_SIZE = 100  # ids per request
MAX_IDS = 10_000
MAX_FILTER_LEN = 256
FORBIDDEN_CHARS = frozenset(';!?<>[]{}()/\\"$#@*^&|~%=+')
DEFAULT_MAX_ITEM_BYTES = 64 * 1024 * 1024
TOKEN_MARGIN = 60.0  # seconds before exp a token is renewed (REFRESH_CACHE_TIME in posemesh's auth.rs)
MAX_PREAMBLE_BYTES = 16 * 1024  # what a multipart body may hold before its first boundary
MAX_EPILOGUE_BYTES = 16 * 1024  # read after the closing delimiter, so the connection can be reused
MAX_PART_HEADER_BYTES = 16 * 1024  # one part's header block; real ones are about 400 bytes
UPLOAD_ROUNDS = 3  # look-ups then writes of one upload_item, when the item changes between the two

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_STAMP_RE = re.compile(r"(?<!\d)(\d{8})_(\d{6})(?!\d)")
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")
_SIZE_RE = re.compile(r"[0-9]{1,20}")  # a u64, as the real client parses it
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

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
        raise BadInput(f"domain_id must be a UUID, got {quoted(domain_id)}")
    return domain_id.strip().lower()


def _check_filter(key: str, value: Any) -> str | None:
    """A query's optional filter: absent (None), or text as `_check_text` allows."""
    return None if value is None else _check_text(key, value, "query.", empty_hint=" (leave it out to match any)")


def _check_text(key: str, value: Any, where: str, *, empty_hint: str = "") -> str:
    """A name or data type as the domain server takes it; raise BadInput."""
    if not isinstance(value, str):
        raise BadInput(f"{where}{key} must be a string, got {type(value).__name__}")
    if not value:
        raise BadInput(f"{where}{key} must not be empty{empty_hint}")
    if len(value) > MAX_FILTER_LEN:
        raise BadInput(f"{where}{key} is too long (max {MAX_FILTER_LEN} characters)")
    bad = sorted(set(value) & FORBIDDEN_CHARS)
    if bad:
        raise BadInput(f"{where}{key} contains forbidden characters: {' '.join(bad)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadInput(f"{where}{key} contains control characters")
    return value


def validate_query(query: Any) -> DomainQuery:
    """Check a job's `query` ({"ids": [...], "name"?, "data_type"?}); raise BadInput."""
    if isinstance(query, DomainQuery):
        return query
    if not isinstance(query, Mapping):
        raise BadInput(f"query must be an object, got {type(query).__name__}")
    unknown = sorted(set(query) - {"ids", "name", "data_type"})
    if unknown:
        raise BadInput(f"query has unknown keys: {listed(unknown)} (allowed: ids, name, data_type)")
    if "ids" not in query:
        raise BadInput("query.ids is required (use [] for all data in the domain)")
    ids = query["ids"]
    if isinstance(ids, list | tuple) and len(ids) > MAX_IDS:
        raise BadInput(f"query.ids has {len(ids)} entries (max {MAX_IDS})")
    return DomainQuery(
        ids=_check_ids(ids, "query.ids"),
        name=_check_filter("name", query.get("name")),
        data_type=_check_filter("data_type", query.get("data_type")),
    )


def _check_ids(ids: Any, what: str) -> tuple[str, ...]:
    """UUIDs, lower-cased, duplicates dropped, first-seen order kept; raise BadInput."""
    if not isinstance(ids, list | tuple):
        raise BadInput(f"{what} must be a list of strings, got {type(ids).__name__}")
    seen: dict[str, None] = {}
    for n, item_id in enumerate(ids):
        if not isinstance(item_id, str):
            raise BadInput(f"{what}[{n}] must be a string, got {type(item_id).__name__}")
        if not _UUID_RE.fullmatch(item_id):
            raise BadInput(f"{what}[{n}] is not a UUID: {quoted(item_id)}")
        seen.setdefault(item_id.lower(), None)
    return tuple(seen)


def is_image(item: DataItem) -> bool:
    """The original node's rule: it wrote each item to `{name}_{id}.{data_type}` and took as an image
    every file whose lower-cased name contains .jpg, .jpeg or .png (aukilabs/vlm-node: server/src/domain.rs
    download_for_job, worker/vlm.py find_images). So `photo.png` stored as `refined_scan_zip` counts too."""
    file_name = f"{item.name}_{item.id}.{item.data_type}".lower()
    return any(ext in file_name for ext in _IMAGE_EXTENSIONS)


def images_only(items: Iterable[DataItem]) -> list[DataItem]:
    return [i for i in items if is_image(i)]


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def name_stamp(name: str) -> tuple[str, datetime] | None:
    """The last YYYYMMDD_HHMMSS stamp in `name` that is a real time: as
    written, and as a UTC time."""
    for date_part, time_part in reversed(_STAMP_RE.findall(name)):
        try:
            return f"{date_part}_{time_part}", datetime.strptime(date_part + time_part, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def capture_time(item: DataItem, exif_time: datetime | None) -> datetime:
    """EXIF DateTimeOriginal, else a YYYYMMDD_HHMMSS stamp in the name, else created_at (UTC)."""
    if exif_time is not None:
        return _utc(exif_time)
    stamp = name_stamp(item.name)
    if stamp is not None:
        return stamp[1]
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
        size = meta["size"]
        name = str(meta["name"])
        data_type = str(meta["data_type"])
    except (KeyError, TypeError, ValueError) as e:
        raise PeerUnavailable(f"{DOMAIN} sent incomplete item metadata: missing or bad {e}") from None
    # A whole number of bytes (u64 in the real client): callers skip large items by this size unseen.
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise PeerUnavailable(f"{DOMAIN} sent item {shown(item_id)} with a bad size {shown(str(size))[:64]}")
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


class _MultipartReader:
    """The items of a multipart/form-data answer, each part framed by its `size` parameter.

    Why not python-multipart (used before): it wants CRLF line ends and the closing delimiter, and
    the real domain server need not send either: the real client reads LF-only bodies and bodies that
    stop after their last part, taking `size` bytes after each part's headers (aukilabs/posemesh:
    core/domain-http/src/domain_data.rs, handle_domain_data_stream, find_headers_end). aiohttp's
    reader wants them too. So this reads what the real client reads, and is stricter where the real
    one loses data without a word: what follows a part's bytes must be a line end and a boundary, or
    the end of the body, and a body that stops inside a part is an error.

        [preamble] --B EOL headers EOL EOL <size bytes> (EOL --B EOL headers ...)* [EOL --B-- epilogue]

    EOL is CRLF or LF. It holds the current item and at most one header block besides.
    """

    def __init__(self, boundary: bytes, domain_id: str, max_item_bytes: int) -> None:
        self.items: list[DataItem] = []
        self._delimiter = b"--" + boundary
        self._domain_id = domain_id
        self._max = max_item_bytes
        self._buf = bytearray()
        self._state = "preamble"  # preamble, boundary, headers, data, after_data, done
        self._scan = 0  # in headers: where to look for the next line end
        self._item: DataItem | None = None  # the part being read, its bytes in _data
        self._data = bytearray()

    @property
    def done(self) -> bool:
        """The closing delimiter was read: anything after it is epilogue."""
        return self._state == "done"

    def write(self, chunk: bytes) -> None:
        if self.done:
            return
        self._buf += chunk
        while self._step():
            pass

    def finish(self) -> list[DataItem]:
        rest = bytes(self._buf)
        if self._state == "done":
            return self.items
        if self._state == "preamble" and not rest.strip():
            return self.items  # an empty answer: no data
        if self._state == "after_data" and rest in (b"", b"\r", b"\n", b"\r\n"):
            return self.items  # stopped after its last part, without the closing delimiter
        if self._state == "preamble":
            raise _Broken("the body has no boundary line")
        if self._state == "data":
            assert self._item is not None
            raise _Broken(
                f"item {shown(self._item.id)} ends after {len(self._data)} of its {self._item.size} bytes (truncated)"
            )
        raise _Broken("the body ended inside a boundary or a part's headers (truncated)")

    def _step(self) -> bool:
        """Read what the buffer holds for the current state; False when more bytes are needed."""
        buf = self._buf
        if self._state == "preamble":
            at = buf.find(self._delimiter)
            if at < 0:
                if len(buf) > MAX_PREAMBLE_BYTES:
                    raise _Broken(f"no boundary in the first {MAX_PREAMBLE_BYTES} bytes")
                return False
            del buf[: at + len(self._delimiter)]
            self._state = "boundary"
            return True

        if self._state == "boundary":  # just after --B: "--" closes the body, a line end opens a part
            if buf[:2] == b"--":
                self._state = "done"
                buf.clear()
                return False
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > 256:
                    raise _Broken("a boundary line is too long")
                return False
            if buf[:end].rstrip(b"\r").strip(b" \t"):  # RFC 2046 allows trailing blanks, nothing else
                raise _Broken(f"a boundary line has more after the boundary: {bytes(buf[:end])[:40]!r}")
            del buf[: end + 1]
            self._state = "headers"
            self._scan = 0
            return True

        if self._state == "headers":
            while True:
                end = buf.find(b"\n", self._scan)
                if end < 0:
                    if len(buf) > MAX_PART_HEADER_BYTES:
                        raise _Broken(f"a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")
                    return False
                line = bytes(buf[self._scan : end])
                self._scan = end + 1
                if line in (b"", b"\r"):  # the blank line after the headers
                    break
            block = bytes(buf[: self._scan])
            del buf[: self._scan]
            self._item = self._part_item(block)
            self._data = bytearray()
            self._state = "data"
            return True

        if self._state == "data":
            assert self._item is not None
            take = min(self._item.size - len(self._data), len(buf))
            self._data += buf[:take]
            del buf[:take]
            if len(self._data) < self._item.size:
                return False
            self.items.append(replace(self._item, data=bytes(self._data)))
            self._data = bytearray()
            self._state = "after_data"
            return True

        if self._state == "after_data":  # a line end and the next boundary, or the end of the body
            waiting = False
            for eol in (b"\r\n", b"\n"):
                expected = eol + self._delimiter
                if buf.startswith(expected):
                    del buf[: len(expected)]
                    self._state = "boundary"
                    return True
                waiting = waiting or expected.startswith(buf)
            if waiting:
                return False
            assert self._item is not None
            raise _Broken(
                f"item {shown(self._item.id)} is not followed by a boundary: its size {self._item.size} is wrong"
            )
        return False

    def _part_item(self, block: bytes) -> DataItem:
        """The item a part's header block describes, its data still to come."""
        headers: dict[str, str] = {}
        for line in block.split(b"\n"):
            key, colon, value = line.rstrip(b"\r").partition(b":")
            if colon:
                # Header bytes are UTF-8 on the wire; keep them as latin-1 text so the
                # parameter parser round-trips every byte, and decode values later.
                headers[key.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        if "content-disposition" not in headers:
            raise _Broken("a part has no Content-Disposition")
        _, params = parse_options_header(headers["content-disposition"])
        meta = {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in params.items()}
        for wanted in ("id", "name", "data-type", "size"):
            if wanted not in meta:
                raise _Broken(f"a part has no {wanted!r} in its Content-Disposition")
        if not _SIZE_RE.fullmatch(meta["size"]):
            raise _Broken(f"item {shown(meta['id'])} has a bad size {meta['size'][:40]!r}")
        size = int(meta["size"])
        if size > self._max:  # refused before its first byte is read
            raise _Broken(f"item {shown(meta['id'])} is larger than {self._max} bytes ({size})")
        try:
            return _item_from_meta(
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
            )
        except PeerUnavailable as e:
            raise _Broken(e.message) from None


class _Broken(Exception):
    pass


# What the HTML5 form encoding escapes in a Content-Disposition parameter (as httpx writes it):
# a quote and control characters become %XX, a backslash is doubled.
_FORM_PARAM_ESCAPES = {'"': "%22", "\\": "\\\\", **{chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B}}
_FORM_PARAM_RE = re.compile("|".join(re.escape(c) for c in _FORM_PARAM_ESCAPES))


def _upload_body(disposition: dict[str, str], data: bytes) -> tuple[bytes, str]:
    """The body of an upload and its Content-Type: one part, framed as the real client frames it
    (aukilabs/posemesh: core/domain-http/src/domain_data.rs, write_create_body / write_update_body),
    then the closing delimiter:

        Content-Type: application/octet-stream
        Content-Disposition: form-data; name="<name>"; data-type="<type>"     (create)
        Content-Disposition: form-data; id="<id>"                             (update)

    Written here because httpx's public `files=` puts Content-Disposition first and allows only
    `name` and `filename` in it, and the domain server reads `data-type` and `id` there."""
    boundary = secrets.token_hex(16)
    params = "; ".join(
        f'{key}="{_FORM_PARAM_RE.sub(lambda m: _FORM_PARAM_ESCAPES[m.group(0)], value)}"'
        for key, value in disposition.items()
    )
    head = (
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Disposition: form-data; {params}\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


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
    renew_at: float  # from then on a new one is fetched before the next use


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
        client_id: str = Settings.client_id,
        email: str,
        password: str,
        timeout: float = Settings.posemesh_timeout,
        http: httpx.AsyncClient | None = None,
        token_margin: float = TOKEN_MARGIN,
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

    async def download_ids(self, domain_id: str, ids: Sequence[str]) -> list[DataItem]:
        """Exactly these items with their bytes, in the order asked, BATCH_SIZE ids a request.

        An id the server no longer returns (deleted since it was listed) is absent from the result,
        and so is anything it returns that was not asked for. No ids, no request: an empty `ids` on
        the wire means all data in the domain."""
        domain_id = validate_domain_id(domain_id)
        if isinstance(ids, str | bytes):
            raise BadInput("ids must be a list of item ids, not one string")
        wanted = _check_ids(list(ids), "ids")
        found: dict[str, DataItem] = {}
        for start in range(0, len(wanted), BATCH_SIZE):
            batch = wanted[start : start + BATCH_SIZE]
            for item in await self._request_items(domain_id, {"ids": ",".join(batch)}, multipart=True):
                if item.id.lower() in batch:
                    found.setdefault(item.id.lower(), item)
        return [found[i] for i in wanted if i in found]

    async def download(self, domain_id: str, query: Mapping[str, Any] | DomainQuery) -> list[DataItem]:
        """Every item the query matches with its bytes, non-images too; prefer list_items + download_ids."""
        return await self._items(domain_id, query, multipart=True)

    async def _items(self, domain_id: str, query: Mapping[str, Any] | DomainQuery, *, multipart: bool) -> list[DataItem]:
        domain_id = validate_domain_id(domain_id)
        out: dict[str, DataItem] = {}
        for params in validate_query(query).batches():
            for item in await self._request_items(domain_id, params, multipart=multipart):
                out.setdefault(item.id, item)
        return list(out.values())

    async def upload_item(self, domain_id: str, name: str, data_type: str, data: bytes) -> DataItem:
        """Store `data` as the domain's item named `name`; returns its metadata (no bytes).

        The domain is asked first for an item of that name (names are unique per domain): one found
        has its bytes replaced by id (PUT), else the item is created (POST). So a retried upload,
        even one whose earlier try was stored but whose answer was lost, updates that item instead
        of making a second; a create refused with 409 (made meanwhile) is looked up and updated, an
        update refused with 404 (deleted meanwhile) is created. As the real compute node writes its
        outputs (aukilabs/posemesh: core/compute-node/src/storage/output.rs put_domain_artifact:
        find_artifact_id, then upload_artifact with existing_id). An item of that name with another
        data type is somebody else's: refused with `item_exists`, never overwritten."""
        domain_id = validate_domain_id(domain_id)
        name = _check_text("name", name, "item ")
        data_type = _check_text("data_type", data_type, "item ")
        if not isinstance(data, bytes | bytearray):
            raise BadInput(f"item data must be bytes, got {type(data).__name__}")
        for _ in range(UPLOAD_ROUNDS):
            existing = await self._find_by_name(domain_id, name)
            if existing is not None:
                if existing.data_type != data_type:
                    raise PeerRefused(
                        f"domain {domain_id} already holds an item named {shown(name)} of type "
                        f"{shown(existing.data_type)}, not {shown(data_type)}; it is left as it is",
                        code="item_exists",
                    )
                item = await self._send_item(domain_id, "PUT", {"id": existing.id}, bytes(data))
            else:
                item = await self._send_item(domain_id, "POST", {"name": name, "data-type": data_type}, bytes(data))
            if item is not None:
                return item
        raise PeerUnavailable(
            f"{DOMAIN}: the item named {shown(name)} in domain {domain_id} kept appearing and vanishing "
            f"while it was uploaded ({UPLOAD_ROUNDS} rounds)"
        )

    async def _find_by_name(self, domain_id: str, name: str) -> DataItem | None:
        """The item of exactly this name, by a metadata request (its filter is taken as exact here too)."""
        found = [i for i in await self._request_items(domain_id, {"name": name}, multipart=False) if i.name == name]
        return found[0] if found else None

    # ------------------------------------------------------------ domain server

    async def _request_items(self, domain_id: str, params: dict[str, str], *, multipart: bool) -> list[DataItem]:
        query = _query_string(params)
        stale: str | None = None
        for attempt in (1, 2):
            grant = await self._grant(domain_id, stale=stale)
            url = f"{grant.url}/api/v1/domains/{quote(domain_id)}/data" + (f"?{query}" if query else "")
            headers = {
                "Authorization": f"Bearer {grant.token.value}",
                "Accept": "multipart/form-data" if multipart else "application/json",
                "posemesh-client-id": self._client_id,
            }
            try:
                async with self._http.stream("GET", url, headers=headers, timeout=self._timeout) as resp:
                    # The real domain server refuses an expired or bad domain token with 403 "invalid
                    # domain access token" (aukilabs/posemesh: bindings/javascript/tests/basic.test.ts).
                    if resp.status_code in (401, 403) and attempt == 1:
                        await _short_body(resp)
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

    async def _send_item(
        self, domain_id: str, method: str, disposition: dict[str, str], data: bytes
    ) -> DataItem | None:
        """One upload request, as the real client sends it (aukilabs/posemesh:
        core/domain-http/src/domain_data.rs, upload_v1, create_v1, update_v1, write_create_body,
        write_update_body): POST (create) or PUT (update) {server}/api/v1/domains/{id}/data, a
        multipart/form-data body of one part whose Content-Disposition carries `name` and
        `data-type` (create) or `id` (update), and the domain token as Bearer. We add
        posemesh-client-id, as on every other request and as the compute node sends it on its
        uploads (core/compute-node/src/storage/client.rs). The answer is {"data": [metadata]}.

        None: the item changed under us, so the caller looks again (409 to a create: one of that
        name exists now; 404 to an update: it was deleted). A refused token (401, or 403 "invalid
        domain access token", which the real server also answers to a token that may read but not
        write: bindings/javascript/tests/basic.test.ts) is re-granted once, as downloads do."""
        stale: str | None = None
        for attempt in (1, 2):
            grant = await self._grant(domain_id, stale=stale)
            url = f"{grant.url}/api/v1/domains/{quote(domain_id)}/data"
            body, content_type = _upload_body(disposition, data)
            headers = {
                "Authorization": f"Bearer {grant.token.value}",
                "posemesh-client-id": self._client_id,
                "Content-Type": content_type,
            }
            try:
                resp = await self._http.request(method, url, headers=headers, content=body, timeout=self._timeout)
            except httpx.TimeoutException as e:
                raise PeerUnavailable(f"{DOMAIN} at {grant.url} timed out ({type(e).__name__})") from None
            except httpx.TransportError as e:
                raise PeerUnavailable(f"{DOMAIN} at {grant.url} is unreachable: {_reason(e)}") from None
            if resp.status_code in (401, 403) and attempt == 1:
                stale = grant.token.value
                continue
            if (method, resp.status_code) in (("POST", 409), ("PUT", 404)):
                return None
            if not 200 <= resp.status_code < 300:
                raise _upload_error(resp.status_code, resp.text[:200], domain_id, len(data))
            return self._upload_answer(resp, domain_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def _upload_answer(self, resp: httpx.Response, domain_id: str) -> DataItem:
        """The one item's metadata in {"data": [...]} (ListDomainDataMetadata in domain_data.rs)."""
        doc = _json(resp, DOMAIN)
        entries = doc.get("data") if isinstance(doc, Mapping) else None
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], Mapping):
            raise PeerUnavailable(f"{DOMAIN} answered an upload to domain {domain_id} without the one item's metadata")
        return _item_from_meta(entries[0], domain_id)

    async def _read_multipart(self, resp: httpx.Response, domain_id: str) -> list[DataItem]:
        ctype, params = parse_options_header(resp.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        parser = None
        if ctype == b"multipart/form-data" and boundary:
            parser = _MultipartReader(boundary, domain_id, self._max_item_bytes)
        epilogue = 0
        try:
            try:
                async for chunk in resp.aiter_bytes():
                    if parser is None:
                        if chunk:  # an empty answer says "no data" whatever its type; this one has bytes
                            raise _Broken(f"content type {resp.headers.get('content-type')!r}")
                        continue
                    parser.write(chunk)
                    if parser.done:  # the rest is epilogue, ignored; a long one is left unread
                        epilogue += len(chunk)
                        if epilogue > MAX_EPILOGUE_BYTES:
                            break
            except httpx.RemoteProtocolError as e:
                raise _Broken(f"connection closed mid-body ({_reason(e)})") from None
            return parser.finish() if parser is not None else []
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
        return token is not None and time.time() < token.renew_at

    def _token(self, value: str, server: str) -> _Token:
        exp = _jwt_exp(value, server)
        # Renew `margin` before exp, but a token that lives less than twice the margin is kept for
        # half its life: under a 60 s margin a 30 s token would otherwise never count as fresh and
        # every call would fetch a new one (the real client's auth.rs does that).
        margin = min(self._margin, max(0.0, exp - time.time()) / 2)
        return _Token(value, exp, exp - margin)

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
            return _Grant(server_url, self._token(access, DDS))
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
            self._dds_token = self._token(value, API)
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
        self._access = self._token(access, API)
        self._refresh = self._token(refresh, API)

    async def _post(
        self, server: str, url: str, *, bearer: str | None = None, json_body: Any = None
    ) -> httpx.Response:
        headers = {"posemesh-client-id": self._client_id, "Content-Type": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        # Only login has a body; refresh, the DDS token and domain auth go out empty, as the real
        # client sends them (aukilabs/posemesh: core/domain-http/src/auth.rs, discovery.rs).
        body = json.dumps(json_body).encode() if json_body is not None else None
        try:
            return await self._http.post(url, content=body, headers=headers, timeout=self._timeout)
        except httpx.TimeoutException as e:
            raise PeerUnavailable(f"{server} at {url} timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise PeerUnavailable(f"{server} at {url} is unreachable: {_reason(e)}") from None


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _query_string(params: Mapping[str, str]) -> str:
    """`ids` joined with literal commas, as the real client has written them since 1.0 (aukilabs/posemesh:
    core/domain-http/src/domain_data.rs, download_v1; httpx's params would send %2C); filters encoded."""
    return "&".join(f"{key}={quote(value, safe=',' if key == 'ids' else '')}" for key, value in params.items())


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


def _upload_error(status: int, body: str, domain_id: str, size: int) -> Exception:
    detail = f" ({body.strip()})" if body and body.strip() else ""
    if status == 403:  # a second time, with a fresh token: this account may not write here
        return PeerRefused(
            f"{DOMAIN} refused to store data in domain {domain_id} (403){detail}: the posemesh account "
            "may read this domain but not write to it",
            code="domain_forbidden",
        )
    if status == 413:
        return PeerRefused(f"{DOMAIN} refused an item of {size} bytes as too large (413){detail}", code="too_large")
    return _status_error(DOMAIN, status, body, domain_id)


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
