"""Property-based tests (hypothesis) of the node's pure input checks:
images, job queries and inputs, realtime stream configs, and the posemesh
multipart and metadata parsers.

Each property says what every input must come to: a valid result, or the
node's own refusal (BadInput, or PeerUnavailable for a broken peer answer),
never another exception; and a refusal says why in one line (separate
properties, so that one kind of failure does not hide the other). Examples
marked "found by this test" are the minimal failures these properties found,
kept so that they are always tried. The services themselves are driven in
tests/test_properties_services.py. `-s` prints how many inputs
were tried; the figures also go to artifacts/property-counts.txt."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import string
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import httpx
import pytest
from hypothesis import event, example, given, note
from hypothesis import strategies as st
from PIL import Image

from server import images
from server.domain import DomainClient, DomainQuery, validate_domain_id, validate_query
from server.errors import BadInput, PeerUnavailable
from server.jobs import JOB_TYPES, MAX_PROMPT_CHARS, JobInput, validate_input, validate_job
from server.realtime import StreamSettings, stream_settings
from tests.property_support import (
    LIMITS,
    SEEDS,
    Counts,
    bounded,
    json_values,
    keep_hypothesis_files_in_artifacts,
    mutated_images,
    near_inputs,
    near_queries,
    one_line,
    stream_configs,
    uuid_like,
    uuids,
)
from vlmnode.v1 import inference_pb2 as pb

keep_hypothesis_files_in_artifacts()

COUNTS = Counts("test_properties")
# Pillow warns about the corrupt EXIF and tags it meets in mutated images; expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")


_report_counts = COUNTS.fixture()


job_types = st.one_of(
    st.sampled_from(JOB_TYPES),
    st.sampled_from(JOB_TYPES),
    st.sampled_from(["TASK_TIMING_V1", " vlm_only", ""]),
    json_values,
)
domain_ids = st.one_of(uuids, uuid_like, json_values)


CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_query_result(query: DomainQuery) -> None:
    assert isinstance(query, DomainQuery)
    for item_id in query.ids:
        assert CANONICAL_UUID.fullmatch(item_id), f"accepted the id {item_id!r}"
    assert len(set(query.ids)) == len(query.ids)
    for value in (query.name, query.data_type):
        if value is not None:
            assert isinstance(value, str) and 0 < len(value) <= 256
            assert not any(ord(c) < 32 or ord(c) == 127 for c in value)
    json.dumps(query.to_dict())


@bounded(500)
@given(near_queries)
@example({"ids": ["e3e70682-c209-4cac-629f-6fbed82c07cd\n"]})  # found by this test: a trailing newline passed
def test_validate_query(query):
    """A query is refused (BadInput) or comes back valid: canonical UUIDs, clean filters."""
    COUNTS.tried("validate_query")
    note(f"query={query!r}")
    try:
        result = validate_query(query)
    except BadInput as exc:
        assert exc.message.strip(), "refused without a word"
        return
    check_query_result(result)
    assert validate_query(result.to_dict()) == result  # a valid query stays valid once stored


def check_input_result(job_type: str, result: JobInput) -> None:
    assert isinstance(result, JobInput)
    assert result.vlm_prompt.strip() and len(result.vlm_prompt) <= MAX_PROMPT_CHARS
    if job_type == "task_timing_v1":
        assert result.prompt.strip()
    if result.webhook_url:
        assert httpx.URL(result.webhook_url).scheme in ("http", "https")


@bounded(500)
@given(st.sampled_from(JOB_TYPES), near_inputs)
def test_validate_input(job_type, data):
    COUNTS.tried("validate_input")
    note(f"job_type={job_type!r} data={data!r}")
    try:
        result = validate_input(job_type, data)
    except BadInput as exc:
        assert exc.message.strip(), "refused without a word"
        return
    check_input_result(job_type, result)


@bounded(500)
@given(job_types, domain_ids, near_queries, near_inputs)
def test_validate_job(job_type, domain_id, query, data):
    COUNTS.tried("validate_job")
    note(f"job_type={job_type!r} domain_id={domain_id!r} query={query!r} data={data!r}")
    try:
        domain, query_result, input_result = validate_job(job_type, domain_id, query, data)
    except BadInput as exc:
        assert exc.message.strip(), "refused without a word"
        return
    assert job_type in JOB_TYPES
    assert CANONICAL_UUID.fullmatch(domain) and validate_domain_id(domain) == domain
    check_query_result(query_result)
    check_input_result(job_type, input_result)


@bounded(500)
@given(job_types, domain_ids, near_queries, near_inputs)
@example("task_timing_v1", "23d60e61-6978-4f6b-a59d-9ffa027755fc", {"\n": None}, {})  # found by this test
@example("task_timing_v1", "23d60e61-6978-4f6b-a59d-9ffa027755fc", {"ids": []}, {"\n": None})  # and this
def test_refusals_are_one_line(job_type, domain_id, query, data):
    """What validate_query, validate_input and validate_job refuse, they say in
    one line (the README's "one readable line"), whatever the caller sent."""
    COUNTS.tried("refusal messages")
    note(f"job_type={job_type!r} domain_id={domain_id!r} query={query!r} data={data!r}")
    for check in (
        lambda: validate_query(query),
        lambda: validate_input(job_type if job_type in JOB_TYPES else "vlm_only", data),
        lambda: validate_job(job_type, domain_id, query, data),
    ):
        try:
            check()
        except BadInput as exc:
            one_line(exc.message)


@bounded(500)
@given(stream_configs)
@example(pb.StreamConfig(flush_after_seconds=math.nan))  # found by this test
def test_stream_settings(config):
    """A stream's config is refused (BadInput, one line) or gives settings within the limits."""
    COUNTS.tried("stream_settings")
    note(f"config={config!r}")
    try:
        result = stream_settings(config, LIMITS, default_model="moondream:1.8b", default_batch=5)
    except BadInput as exc:
        one_line(exc.message)
        return
    assert isinstance(result, StreamSettings)
    assert 1 <= result.batch_size <= LIMITS.max_batch
    assert result.model and len(result.model) <= 200
    assert result.prompt is None or len(result.prompt) <= LIMITS.max_prompt_chars
    assert 0 <= result.options.get("num_predict", 0) <= LIMITS.max_num_predict
    if "temperature" in result.options:
        assert 0 <= result.options["temperature"] <= 2
    # A stream waits this long for quiet: never, or a finite positive time.
    assert result.flush_after is None or (math.isfinite(result.flush_after) and 0 < result.flush_after <= 3600), (
        f"flush_after_seconds={config.flush_after_seconds!r} gives flush_after={result.flush_after!r}"
    )


image_bytes = st.one_of(st.binary(max_size=200), mutated_images())
image_limits = st.fixed_dictionaries(
    {"max_side": st.sampled_from([1024, 64, 16, 1]), "max_pixels": st.sampled_from([40_000_000, 1_000, 100])}
)


def check_prepared(result: images.PreparedImage, max_side: int) -> None:
    assert isinstance(result, images.PreparedImage)
    assert 0 < result.width <= max_side and 0 < result.height <= max_side
    with Image.open(io.BytesIO(result.jpeg)) as out:
        assert out.format == "JPEG" and out.size == (result.width, result.height)
        out.load()
    assert result.taken_at is None or result.taken_at.tzinfo is not None


@bounded(400)
@given(image_bytes, image_limits)
def test_prepare_image(data, limits):
    COUNTS.tried("prepare_image")
    note(f"data={data[:400]!r} ({len(data)} bytes) limits={limits!r}")
    try:
        result = images.prepare_image(data, **limits)
    except BadInput as exc:
        event("refused")
        one_line(exc.message)
        return
    event("prepared")
    check_prepared(result, limits["max_side"])
    # What prepare_image took, the cheap header check takes too.
    fmt, width, height = images.check_image(data, max_pixels=limits["max_pixels"])
    assert width * height <= limits["max_pixels"]


@bounded(400)
@given(image_bytes, image_limits)
def test_check_image(data, limits):
    COUNTS.tried("check_image")
    note(f"data={data[:400]!r} ({len(data)} bytes) limits={limits!r}")
    try:
        fmt, width, height = images.check_image(data, max_pixels=limits["max_pixels"])
    except BadInput as exc:
        one_line(exc.message)
        return
    assert isinstance(fmt, str) and width >= 0 and height >= 0
    assert width * height <= limits["max_pixels"]


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_unmutated_seeds_are_prepared(name):
    """The seeds of the mutated images are images the node takes (all but the bomb)."""
    if name == "png_bomb_header":
        with pytest.raises(BadInput, match="too large"):
            images.prepare_image(SEEDS[name])
        return
    check_prepared(images.prepare_image(SEEDS[name], max_side=64), 64)


# --------------------------------------------------------------------------- posemesh: multipart and metadata

DOMAIN = "23d60e61-6978-4f6b-a59d-9ffa027755fc"
BROKEN = "domain server sent a broken multipart body"


def _jwt(ttl: int = 3600) -> str:
    def b64(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none'})}.{b64({'exp': int(time.time()) + ttl})}.sig"


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk


class Posemesh:
    """DomainClients whose HTTP goes to an in-process posemesh (httpx.MockTransport):
    logins and grants succeed, and `self.answer(request)` answers the domain
    server's data request. One client per set of options, kept across examples
    (its tokens too), so an example costs only its own parsing."""

    def __init__(self) -> None:
        self.answer = lambda request: httpx.Response(500)
        self.clients: dict[tuple, DomainClient] = {}

    async def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/user/login":
            return httpx.Response(200, json={"access_token": _jwt(), "refresh_token": _jwt()})
        if path == "/service/domains-access-token":
            return httpx.Response(200, json={"access_token": _jwt()})
        if path.endswith("/auth"):
            return httpx.Response(200, json={"domain_server": {"url": "http://domain.test"}, "access_token": _jwt()})
        if path == f"/api/v1/domains/{DOMAIN}/data":
            return self.answer(request)
        return httpx.Response(404, text="no such path")

    def client(self, answer, **kw) -> DomainClient:
        self.answer = answer
        key = tuple(sorted(kw.items()))
        if key not in self.clients:
            http = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
            self.clients[key] = DomainClient(
                "http://api.test", "http://dds.test", email="e", password="p", http=http, **kw
            )
        return self.clients[key]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client._http.aclose()


@pytest.fixture
async def posemesh():
    mesh = Posemesh()
    yield mesh
    await mesh.aclose()


def peer_error(exc: PeerUnavailable, prefix: str) -> None:
    assert exc.message.startswith(prefix), exc.message
    # The message may quote what the peer sent, but stays on one line.
    assert "\n" not in exc.message and "\r" not in exc.message, exc.message


def _rfc3339(dt: datetime, nanos: str) -> str:
    """RFC 3339 as servers write it: Z for UTC, digits past microseconds kept."""
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if dt.microsecond or nanos:
        text += f".{dt.microsecond:06d}{nanos}"
    offset = dt.utcoffset()
    if offset == timedelta(0):
        return text + "Z"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return text + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


zones = st.one_of(
    st.just(UTC),
    st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes))),
)
# Well-formed times: years 2..9998, so that every offset can be moved to UTC.
times = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=zones)
# Header text: any characters but CR and LF (a header is one line), with
# quotes and backslashes escaped as RFC 7578 quoted-strings (Go's mime/multipart).
header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\\"), max_size=24)
boundaries = st.text(string.ascii_letters + string.digits + "-_.'+", min_size=1, max_size=70)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def part_data(draw, boundary: bytes) -> bytes:
    delimiter = b"\r\n--" + boundary
    pieces = st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [b"\r\n", b"\r", b"\n", b"-", b"--", b"\r\n\r\n", boundary, b"--" + boundary, b"--" + boundary + b"--",
             delimiter[:-1], b"\r\n-" + boundary, b"\r\n--", b"Content-Disposition: form-data; size=\"1\"\r\n"]
        ),
    )
    data = b"".join(draw(st.lists(pieces, max_size=12)))
    # Well-formed: no delimiter inside the data (the CRLF before it belongs
    # to the delimiter, so the data may not start with --boundary either).
    data = (b"\r\n" + data).replace(delimiter, b"\r\nX-" + boundary)[2:]
    assert delimiter not in b"\r\n" + data
    return data


@st.composite
def multipart_answers(draw, max_items: int = 5):
    boundary = draw(boundaries).encode()
    items = []
    for n in range(draw(st.integers(0, max_items))):
        created, updated = draw(times), draw(times)
        item = {
            "id": draw(st.one_of(uuids, header_text.filter(bool))) + f"#{n}",  # unique
            "name": draw(header_text),
            "data_type": draw(st.one_of(st.sampled_from(["jpg", "png", "txt", "JPEG"]), header_text)),
            "domain_id": draw(st.sampled_from([None, DOMAIN, str(uuid.uuid4())])),
            "created_at": created,
            "updated_at": updated,
            "data": draw(part_data(boundary)),
            "nanos": draw(st.sampled_from(["", "123", "999"])),
            "content_type": draw(st.booleans()),
        }
        items.append(item)
    out = io.BytesIO()
    for item in items:
        params = [
            ("name", item["name"]), ("data-type", item["data_type"]), ("id", item["id"]),
            ("size", str(len(item["data"]))),
            ("created-at", _rfc3339(item["created_at"], item["nanos"])),
            ("updated-at", _rfc3339(item["updated_at"], item["nanos"])),
        ]
        if item["domain_id"]:
            params.append(("domain-id", item["domain_id"]))
        params = draw(st.permutations(params))
        disposition = "form-data; " + "; ".join(f"{k}={_quoted(v)}" for k, v in params)
        out.write(b"--" + boundary + b"\r\n")
        header = draw(st.sampled_from(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"]))
        out.write(f"{header}: {disposition}\r\n".encode())
        if item["content_type"]:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + item["data"] + b"\r\n")
    out.write(b"--" + boundary + b"--\r\n")
    return boundary, out.getvalue(), items


@st.composite
def splits(draw, body: bytes) -> list[bytes]:
    """The body cut into the chunks the network might deliver."""
    if draw(st.booleans()):
        size = draw(st.integers(1, 9))
        return [body[i : i + size] for i in range(0, len(body), size)]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=20))))
    bounds = [0, *cuts, len(body)]
    return [body[a:b] for a, b in pairwise(bounds)]


def multipart_response(boundary: bytes, chunks: list[bytes], quote_boundary: bool) -> httpx.Response:
    value = f'"{boundary.decode()}"' if quote_boundary else boundary.decode()
    headers = {"content-type": f"multipart/form-data; boundary={value}"}
    return httpx.Response(200, headers=headers, stream=_Chunks(chunks))


@bounded(400)
@given(st.data())
async def test_multipart_round_trip(posemesh, data):
    """A well-formed answer comes back item for item, byte for byte, however it is cut."""
    COUNTS.tried("multipart well-formed")
    boundary, body, sent = data.draw(multipart_answers())
    chunks = data.draw(splits(body))
    quote_boundary = data.draw(st.booleans()) or not boundary.isalnum()
    client = posemesh.client(lambda request: multipart_response(boundary, chunks, quote_boundary))
    got = await client.download(DOMAIN, {"ids": []})
    assert [(i.id, i.name, i.data_type, i.size, i.data) for i in got] == [
        (s["id"], s["name"], s["data_type"], len(s["data"]), s["data"]) for s in sent
    ]
    for item, s in zip(got, sent, strict=False):
        assert item.domain_id == (s["domain_id"] or DOMAIN)
        assert item.created_at == s["created_at"] and item.created_at.tzinfo is not None
        assert item.updated_at == s["updated_at"]


@st.composite
def corrupted(draw, body: bytes, boundary: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate", "size", "crlf"]))
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.one_of(
                st.binary(min_size=1, max_size=12),
                st.sampled_from([b"\r\n", b"--" + boundary, b"\r\n--" + boundary + b"\r\n",
                                 b"\r\n--" + boundary + b"--",
                                 b'; size="99999999999999999999"', b'created-at="0001-01-01T00:00:00+01:00"', b'"']),
            ))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 30))]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 80))]
        elif kind == "size":
            text = bytes(data)
            spot = text.find(b'size="', at)
            if spot >= 0:
                end = text.find(b'"', spot + 6)
                data[spot + 6 : end] = draw(st.sampled_from([b"", b"-1", b"1e3", b" 3", b"0x10", b"\xd9\xa3", b"7"]))
        elif kind == "crlf":  # lone CR or LF where CRLF belongs
            spot = bytes(data).find(b"\r\n", at)
            if spot >= 0:
                data[spot : spot + 2] = draw(st.sampled_from([b"\r", b"\n", b"\n\r", b""]))
    return bytes(data)


@bounded(400)
@given(st.data())
async def test_multipart_corrupted(posemesh, data):
    """A broken answer is refused as PeerUnavailable ("broken multipart body"), and nothing else."""
    COUNTS.tried("multipart corrupted")
    boundary, body, _ = data.draw(multipart_answers(max_items=3))
    bad = data.draw(corrupted(body, boundary))
    chunks = data.draw(splits(bad))
    max_item_bytes = data.draw(st.sampled_from([64 * 1024 * 1024, 16]))
    answer = lambda request: multipart_response(boundary, chunks, True)  # noqa: E731
    try:
        got = await posemesh.client(answer, max_item_bytes=max_item_bytes).download(DOMAIN, {"ids": []})
    except PeerUnavailable as exc:
        event("refused as broken")
        peer_error(exc, BROKEN)
        return
    event("still well-formed")
    for item in got:  # still well-formed after the change: each item is whole
        assert item.size == len(item.data) <= max_item_bytes
        assert item.created_at.tzinfo is not None and item.updated_at.tzinfo is not None


@bounded(150)
@given(st.binary(max_size=300), st.sampled_from(["multipart/form-data; boundary=b", "multipart/form-data",
                                                  "text/plain", "multipart/form-data; boundary=\"\""]))
async def test_multipart_arbitrary_bytes(posemesh, body, content_type):
    COUNTS.tried("multipart arbitrary bytes")
    answer = lambda request: httpx.Response(200, headers={"content-type": content_type}, content=body)  # noqa: E731
    try:
        got = await posemesh.client(answer).download(DOMAIN, {"ids": []})
    except PeerUnavailable as exc:
        peer_error(exc, BROKEN)
        return
    assert all(item.size == len(item.data) for item in got)


meta_times = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), zones)).map(lambda dt: dt.isoformat()),
    st.sampled_from(["2025-08-10T16:40:00Z", "2025-08-10T16:40:00.123456789z", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "", "yesterday"]),
    json_values,
)
meta_entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"id": st.one_of(uuids, json_values), "name": st.one_of(header_text, json_values),
         "data_type": st.one_of(st.just("jpg"), json_values), "size": st.one_of(st.integers(0, 10**6), json_values),
         "created_at": meta_times, "updated_at": meta_times},
        optional={"domain_id": st.one_of(st.just(DOMAIN), json_values)},
    ),
)


@bounded(300)
@given(st.one_of(st.fixed_dictionaries({"data": st.lists(meta_entries, max_size=4)}), json_values))
@example({"data": [{"id": "x", "name": "n", "data_type": "jpg", "size": 0, "created_at": "2025-08-10T16:40:00Z",
                    "updated_at": "0001-01-01T00:00:00+01:00"}]})  # found by this test
async def test_metadata_answers(posemesh, document):
    """Whatever metadata JSON the domain server sends, list_items returns items
    or says the server is broken (PeerUnavailable); never another exception,
    which would reach a CreateJob caller as INTERNAL (HTTP 500)."""
    COUNTS.tried("metadata json")
    note(f"document={document!r}")
    body = json.dumps(document)  # NaN and Infinity too, which Python's JSON reader takes
    headers = {"content-type": "application/json"}
    answer = lambda request: httpx.Response(200, content=body, headers=headers)  # noqa: E731
    try:
        got = await posemesh.client(answer).list_items(DOMAIN, {"ids": []})
    except PeerUnavailable as exc:
        peer_error(exc, "posemesh domain server sent")
        return
    for item in got:
        assert item.created_at.tzinfo is not None and item.data is None
