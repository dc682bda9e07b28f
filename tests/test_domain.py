"""server/domain.py against the fake posemesh over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

import server.domain
from devpeers.fake_posemesh import INVALID_DOMAIN_TOKEN, FakePosemesh, Generated
from server.domain import (
    BATCH_SIZE,
    TOKEN_MARGIN,
    DataItem,
    DomainClient,
    DomainQuery,
    capture_time,
    images_only,
    is_image,
    validate_domain_id,
    validate_query,
)
from server.errors import BadInput, PeerRefused, PeerUnavailable

EMAIL = "worker@example.com"
PASSWORD = "correct horse"


@pytest.fixture
def fake():
    with FakePosemesh(email=EMAIL, password=PASSWORD, client_id="vlm-node") as f:
        yield f


@pytest.fixture
def domain_id(fake):
    return fake.add_domain(str(uuid.uuid4()))


def make_client(fake, **kw) -> DomainClient:
    kw.setdefault("email", EMAIL)
    kw.setdefault("password", PASSWORD)
    kw.setdefault("timeout", 5.0)
    # trailing slashes must be stripped
    return DomainClient(fake.api_url + "/", fake.dds_url + "/", **kw)


@pytest.fixture
async def client(fake):
    c = make_client(fake)
    yield c
    await c.aclose()


class SkewedClock:
    """server.domain's clock, `offset` seconds off the real one; the fake keeps real time."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.fixture
def client_clock(monkeypatch):
    clock = SkewedClock()
    monkeypatch.setattr(server.domain, "time", clock)
    return clock


def counts(fake) -> tuple[int, int, int, int]:
    return fake.logins, fake.refreshes, fake.dds_tokens, fake.dds_grants


TRICKY = (
    b"\r\n--posemesh-0123456789abcdef\r\n"
    b'Content-Disposition: form-data; name="fake"; size="3"\r\n\r\n'
    b"\r\n\r\n--\r\n--B--\r\n\x00\xff"
)


# --------------------------------------------------------------------------- happy paths


async def test_download_happy_path(fake, domain_id, client):
    big = os.urandom(1024 * 1024)
    t0 = datetime(2025, 8, 10, 16, 54, 41, 124336, tzinfo=UTC)
    ids = {
        "a": fake.add_item(domain_id, "photo_20250810_165440", b"\xff\xd8jpeg-a\xff\xd9", "jpg", created_at=t0),
        "tricky": fake.add_item(domain_id, "tricky", TRICKY, "png"),
        "big": fake.add_item(domain_id, "big one", big, "jpeg"),
        "txt": fake.add_item(domain_id, "notes", b"hello\r\n", "txt"),
    }
    items = await client.download(domain_id, {"ids": []})
    by_id = {i.id: i for i in items}
    assert set(by_id) == set(ids.values())
    a = by_id[ids["a"]]
    assert a.data == b"\xff\xd8jpeg-a\xff\xd9"
    assert (a.name, a.data_type, a.domain_id, a.size) == ("photo_20250810_165440", "jpg", domain_id, len(a.data))
    assert a.created_at == t0 and a.created_at.tzinfo is not None
    assert by_id[ids["tricky"]].data == TRICKY
    assert by_id[ids["big"]].data == big and by_id[ids["big"]].size == len(big)
    assert by_id[ids["txt"]].data == b"hello\r\n"
    assert (fake.logins, fake.dds_tokens, fake.dds_grants, fake.downloads) == (1, 1, 1, 1)
    assert fake.client_ids_seen == {"vlm-node"}
    assert [i.id for i in images_only(items)] == [i.id for i in items if i.data_type != "txt"]


async def test_small_answer_in_one_chunk(fake, domain_id, client):
    # The whole body fits one network read: lengths must come from the boundary
    # parser, not from reading `size` bytes per network chunk.
    want = {fake.add_item(domain_id, f"img{n}", bytes([n]) * (n + 1) + b"\r\n--x", "jpg"): n for n in range(5)}
    items = await client.download(domain_id, {"ids": list(want)})
    assert {i.id: i.data for i in items} == {k: bytes([n]) * (n + 1) + b"\r\n--x" for k, n in want.items()}


async def test_answer_in_tiny_chunks(fake, domain_id, client):
    fake.chunk_size = 3  # every boundary and header is split across reads
    want = {fake.add_item(domain_id, f"img{n}", TRICKY * (n + 1), "jpg"): TRICKY * (n + 1) for n in range(4)}
    items = await client.download(domain_id, {"ids": []})
    assert {i.id: i.data for i in items} == want


async def test_empty_domain_and_no_match(fake, domain_id, client):
    assert await client.download(domain_id, {"ids": []}) == []
    fake.add_item(domain_id, "x", b"1")
    assert await client.download(domain_id, {"ids": [str(uuid.uuid4())]}) == []
    assert await client.list_items(domain_id, {"ids": [], "name": "nope"}) == []


async def test_list_items_is_metadata_only(fake, domain_id, client):
    item_id = fake.add_item(domain_id, "photo", b"12345", "png")
    [item] = await client.list_items(domain_id, {"ids": []})
    assert isinstance(item, DataItem)
    assert (item.id, item.name, item.data_type, item.size, item.data) == (item_id, "photo", "png", 5, None)
    assert fake.metadata_requests == 1 and fake.downloads == 0


async def test_filters(fake, domain_id, client):
    a = fake.add_item(domain_id, "a", b"a", "jpg")
    b = fake.add_item(domain_id, "b", b"b", "png")
    c = fake.add_item(domain_id, "c", b"c", "jpg")

    async def ids(q):
        return sorted(i.id for i in await client.download(domain_id, q))

    assert await ids({"ids": [], "data_type": "jpg"}) == sorted([a, c])
    assert await ids({"ids": [], "name": "b"}) == [b]
    assert await ids({"ids": [a, b], "data_type": "jpg"}) == [a]
    assert await ids({"ids": [a, b, c], "name": "c", "data_type": "png"}) == []
    assert await ids({"ids": [b.upper()]}) == [b]  # ids are normalised to lower case
    sent = fake.domain_queries
    assert sent[0] == {"data_type": "jpg"} and sent[1] == {"name": "b"}
    assert sent[2] == {"ids": f"{a},{b}", "data_type": "jpg"}


async def test_more_than_100_ids_are_batched(fake, domain_id, client):
    ids = [fake.add_item(domain_id, f"p{n:03d}", n.to_bytes(2, "big"), "jpg") for n in range(250)]
    items = await client.download(domain_id, {"ids": ids + ids[:5]})  # duplicates are dropped
    assert sorted(i.id for i in items) == sorted(ids)
    assert [len(q["ids"].split(",")) for q in fake.domain_queries] == [100, 100, 50]
    metas = await client.list_items(domain_id, {"ids": ids})
    assert len(metas) == 250
    assert (fake.logins, fake.dds_grants) == (1, 1)


# --------------------------------------------------------------------------- metadata first, then images by id

MIB = 1024 * 1024


async def test_mixed_domain_downloads_only_its_images(fake, domain_id, client):
    jpeg, png = b"\xff\xd8photo\xff\xd9", b"\x89PNG\r\n\x1a\n"
    photos = {
        fake.add_item(domain_id, "photo_req_1_20250810_165440", jpeg, "jpg"): jpeg,
        fake.add_item(domain_id, "IMG_0002", jpeg + b"2", "JPEG"): jpeg + b"2",
        fake.add_item(domain_id, "screenshot", png, "png"): png,
    }
    others = {
        fake.add_sensor_log(domain_id),
        fake.add_scan(domain_id),
        fake.add_manifest(domain_id),
        fake.add_scan(domain_id, name="scan_2025-08-10_17-00-00", size=200 * MIB),
    }
    listed = await client.list_items(domain_id, {"ids": []})
    assert {i.id for i in listed} == set(photos) | others
    assert {i.data_type for i in listed if i.id in others} == {"dmt_accel_csv", "refined_scan_zip", "dmt_manifest_json"}
    assert max(i.size for i in listed) == 200 * MIB  # known from the metadata, before any download
    wanted = [i.id for i in images_only(listed)]
    assert sorted(wanted) == sorted(photos)

    items = await client.download_ids(domain_id, wanted)
    assert [(i.id, i.data) for i in items] == [(i, photos[i]) for i in wanted]
    assert sorted(fake.bytes_served) == sorted(photos)  # not one byte of the log, scans or manifest
    assert fake.bytes_sent < 2048
    assert (fake.metadata_requests, fake.downloads) == (1, 1)


async def test_download_of_everything_stops_at_a_large_item_unread(fake, domain_id, client):
    fake.add_item(domain_id, "photo", b"\xff\xd8x", "jpg")
    big = fake.add_scan(domain_id, size=200 * MIB)
    with pytest.raises(PeerUnavailable) as e:
        await client.download(domain_id, {"ids": []})
    assert e.value.message == (
        f"domain server sent a broken multipart body: item {big} is larger than {64 * MIB} bytes ({200 * MIB})"
    )
    await asyncio.sleep(0.2)  # let the server notice the closed connection
    assert fake.bytes_sent < 32 * MIB  # refused at its headers: the answer was dropped, not read


async def test_generated_item_arrives_whole(fake, domain_id, client):
    size = 3 * MIB + 5  # pieces of 1 MiB, written in chunks of 64 KiB: neither divides it
    item_id = fake.add_item(domain_id, "long_exposure", Generated(size, b"abcdefg"), "png")
    [item] = await client.download_ids(domain_id, [item_id])
    assert item.size == size and item.data == (b"abcdefg" * (size // 7 + 1))[:size]
    assert fake.bytes_served == [item_id]


async def test_item_over_max_item_bytes_is_refused(fake, domain_id):
    exact = fake.add_item(domain_id, "exact", b"e" * 100, "jpg")
    over = fake.add_item(domain_id, "over", b"o" * 101, "jpg")
    client = make_client(fake, max_item_bytes=100)
    try:
        [item] = await client.download_ids(domain_id, [exact])
        assert item.data == b"e" * 100
        with pytest.raises(PeerUnavailable, match=f"item {over} is larger than 100 bytes \\(101\\)"):
            await client.download_ids(domain_id, [exact, over])
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("name", "data_type", "image"),
    [
        ("photo", "jpg", True),
        ("photo", "jpeg", True),
        ("photo", "png", True),
        ("photo", "JPEG", True),
        ("photo", "Png", True),
        ("photo", ".png", True),
        ("dmt_accel_csv_2025-08-10_16-54-40", "dmt_accel_csv", False),
        ("scan_2025-08-10_16-54-40", "refined_scan_zip", False),
        ("dmt_manifest_json_2025-08-10_16-54-40", "dmt_manifest_json", False),
        ("clip", "mp4", False),
        ("notes", "txt", False),
        ("photo", "", False),
        ("photo", "image/jpeg", False),  # no ".jpeg" in photo_<id>.image/jpeg
        ("jpg", "txt", False),  # no dot before it
        # The original's rule reads the whole file name, so these count as images too:
        ("photo.JPG", "bin", True),
        ("scan.png", "refined_scan_zip", True),
        ("photo", "jpgx", True),  # it cut the file name after ".jpg"
    ],
)
def test_is_image_is_the_original_rule(name, data_type, image):
    assert is_image(_item(name, data_type)) is image
    assert images_only([_item(name, data_type)]) == ([_item(name, data_type)] if image else [])


async def test_download_ids_in_the_order_asked(fake, domain_id, client):
    ids = [fake.add_item(domain_id, f"p{n}", bytes([n]) * (n + 1), "jpg") for n in range(5)]
    gone = str(uuid.uuid4())  # deleted since it was listed
    items = await client.download_ids(domain_id, [ids[3], gone, ids[0].upper(), ids[4], ids[3]])
    assert [(i.id, i.data) for i in items] == [(ids[3], b"\x03" * 4), (ids[0], b"\x00"), (ids[4], b"\x04" * 5)]
    assert fake.domain_query_strings == [f"ids={ids[3]},{gone},{ids[0]},{ids[4]}"]
    assert sorted(fake.bytes_served) == sorted([ids[3], ids[0], ids[4]])
    assert await client.download_ids(domain_id, []) == []
    assert await client.download_ids(domain_id, [gone]) == []
    assert fake.downloads == 2  # none for no ids: an empty ids asks for everything


async def test_download_ids_batches_of_100(fake, domain_id, client):
    ids = [fake.add_item(domain_id, f"p{n:03d}", n.to_bytes(2, "big"), "jpg") for n in range(250)]
    wanted = ids[::-1]
    items = await client.download_ids(domain_id, wanted)
    assert [i.id for i in items] == wanted
    assert [i.data for i in items] == [n.to_bytes(2, "big") for n in range(249, -1, -1)]
    assert [len(q.removeprefix("ids=").split(",")) for q in fake.domain_query_strings] == [BATCH_SIZE, BATCH_SIZE, 50]
    assert (fake.logins, fake.dds_grants) == (1, 1)


async def test_download_ids_refuses_bad_ids_before_any_request(fake, domain_id, client):
    with pytest.raises(BadInput, match=r"ids\[1\] is not a UUID: 'a,b'"):
        await client.download_ids(domain_id, [GOOD_ID, "a,b"])
    with pytest.raises(BadInput, match="not one string"):
        await client.download_ids(domain_id, GOOD_ID)
    with pytest.raises(BadInput, match=r"ids\[0\] must be a string"):
        await client.download_ids(domain_id, [7])
    with pytest.raises(BadInput, match="domain_id must be a UUID"):
        await client.download_ids("x", [GOOD_ID])
    assert fake.logins == 0


async def test_ids_go_with_literal_commas(fake, domain_id, client):
    a = fake.add_item(domain_id, "photo one", b"a", "jpg")
    b = fake.add_item(domain_id, "photo two", b"b", "jpg")
    assert len(await client.list_items(domain_id, {"ids": [a, b], "name": "photo one", "data_type": "jpg"})) == 1
    assert len(await client.download_ids(domain_id, [a, b])) == 2
    assert len(await client.download(domain_id, {"ids": []})) == 2
    assert fake.domain_query_strings == [f"ids={a},{b}&name=photo%20one&data_type=jpg", f"ids={a},{b}", ""]


# --------------------------------------------------------------------------- tokens


async def test_short_lived_tokens_are_kept_then_refreshed_not_relogged(domain_id, fake):
    # Tokens that live 3 s, far under the 60 s margin, are kept for half their life: not
    # fetched again on every call, and never sent once expired.
    fake.token_ttl = 3
    fake.add_item(domain_id, "x", b"x")
    client = make_client(fake)  # the default margin, 60 s
    try:
        for _ in range(3):
            await client.download(domain_id, {"ids": []})
        assert counts(fake) == (1, 0, 1, 1)
        await asyncio.sleep(1.6)  # past half of every token's life (exp is whole seconds: 2 to 3 s)
        [item] = await client.download(domain_id, {"ids": []})
        assert item.data == b"x"
        assert counts(fake) == (1, 1, 2, 2)
        assert fake.domain_requests == fake.downloads == 4  # none refused
    finally:
        await client.aclose()


async def test_token_margin_is_60_seconds(fake, domain_id, client, client_clock):
    assert TOKEN_MARGIN == 60
    await client.list_items(domain_id, {"ids": []})  # every token lives 3600 s
    client_clock.offset = 3600 - 70  # 69 to 70 s left: kept
    await client.list_items(domain_id, {"ids": []})
    assert counts(fake) == (1, 0, 1, 1)
    client_clock.offset = 3600 - 55  # 54 to 55 s left: inside the margin, all renewed ahead of expiry
    await client.list_items(domain_id, {"ids": []})
    assert counts(fake) == (1, 1, 2, 2)
    await client.list_items(domain_id, {"ids": []})  # the new ones have 55 s by this clock: kept
    assert counts(fake) == (1, 1, 2, 2)


async def test_auth_and_dds_posts_have_no_body(fake, domain_id, client, client_clock):
    await client.list_items(domain_id, {"ids": []})
    client_clock.offset = 3600 - 30  # renew all: the refresh goes out too
    await client.list_items(domain_id, {"ids": []})
    auth = f"/dds/api/v1/domains/{domain_id}/auth"
    token = "/api-svc/service/domains-access-token"
    assert [p.path for p in fake.posts] == ["/api-svc/user/login", token, auth, "/api-svc/user/refresh", token, auth]
    assert json.loads(fake.posts[0].body) == {"email": EMAIL, "password": PASSWORD}
    assert [p.body for p in fake.posts[1:]] == [b""] * 5
    for post in fake.posts:
        assert post.headers["content-type"] == "application/json"
        assert post.headers["posemesh-client-id"] == "vlm-node"


@pytest.mark.parametrize("refusal", ["expired domain token: 403", "401"])
async def test_refused_domain_token_regrants_once(fake, domain_id, client, refusal):
    fake.add_item(domain_id, "x", b"x")
    await client.download(domain_id, {"ids": []})
    if refusal == "401":
        fake.fail_next(1, 401)
    else:
        fake.mode = "expire_tokens"  # 403 "invalid domain access token", as the real server refuses it
    [item] = await client.download(domain_id, {"ids": []})
    assert item.data == b"x"
    assert counts(fake) == (1, 0, 1, 2)
    assert (fake.domain_requests, fake.downloads) == (3, 2)


async def test_token_expired_at_the_server_answers_403_and_is_regranted(fake, domain_id, client, client_clock):
    # The node's clock runs 10 s behind: a domain token it still counts fresh has expired at the
    # domain server, which refuses it as the real one does.
    fake.domain_token_ttl = 2
    fake.add_item(domain_id, "x", b"x")
    client_clock.offset = -10
    await client.list_items(domain_id, {"ids": []})
    await asyncio.sleep(2.05)
    [item] = await client.list_items(domain_id, {"ids": []})
    assert item.name == "x"
    assert counts(fake) == (1, 0, 1, 2)  # one new grant, nothing else
    assert fake.domain_requests == 3


async def test_second_403_is_domain_forbidden(fake, domain_id, client):
    item_id = fake.add_item(domain_id, "x", b"x")
    await client.list_items(domain_id, {"ids": []})
    fake.refuse_domain_tokens(2)
    with pytest.raises(PeerRefused) as e:
        await client.download_ids(domain_id, [item_id])
    assert e.value.code == "domain_forbidden"
    assert INVALID_DOMAIN_TOKEN in e.value.message and "403" in e.value.message
    assert counts(fake) == (1, 0, 1, 2)  # one new grant, not a loop
    assert fake.domain_requests == 3 and fake.bytes_served == []
    [item] = await client.download_ids(domain_id, [item_id])  # the refusals are over: the new grant works
    assert item.data == b"x" and counts(fake) == (1, 0, 1, 2)


async def test_revoked_tokens_fall_back_through_every_layer(fake, domain_id, client):
    fake.add_item(domain_id, "x", b"x")
    await client.list_items(domain_id, {"ids": []})
    fake.revoke_all_tokens()  # domain (403), DDS, user and refresh tokens (401) all rejected now
    [item] = await client.list_items(domain_id, {"ids": []})
    assert item.name == "x"
    assert counts(fake) == (2, 1, 3, 3)


async def test_persistent_401_is_refused_not_looped(fake, domain_id, client):
    fake.add_item(domain_id, "x", b"x")
    await client.download(domain_id, {"ids": []})
    fake.fail_next(5, 401)
    with pytest.raises(PeerRefused) as e:
        await client.download(domain_id, {"ids": []})
    assert e.value.code == "auth_failed"
    assert fake.domain_requests == 3  # first download, then one try and one retry


async def test_bad_credentials_refused_once_without_spinning(fake, domain_id):
    fake.add_item(domain_id, "x", b"x")
    client = make_client(fake, password="wrong")
    try:
        with pytest.raises(PeerRefused) as e:
            await client.download(domain_id, {"ids": []})
        assert e.value.code == "auth_failed"
        assert e.value.message == "posemesh login refused: check POSEMESH_EMAIL/POSEMESH_PASSWORD"
        results = await asyncio.gather(
            *(client.download(domain_id, {"ids": []}) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, PeerRefused) and r.code == "auth_failed" for r in results)
        assert fake.logins == 1
        assert fake.dds_grants == 0 and fake.domain_requests == 0
    finally:
        await client.aclose()


async def test_concurrent_downloads_share_one_login(fake, domain_id, client):
    ids = [fake.add_item(domain_id, f"i{n}", bytes([n]) * 1000) for n in range(10)]
    results = await asyncio.gather(*(client.download(domain_id, {"ids": [i]}) for i in ids))
    assert [r[0].id for r in results] == ids
    assert (fake.logins, fake.dds_tokens, fake.dds_grants, fake.downloads) == (1, 1, 1, 10)


# --------------------------------------------------------------------------- refusals and outages


async def test_unknown_domain(fake, client):
    with pytest.raises(PeerRefused) as e:
        await client.download(str(uuid.uuid4()), {"ids": []})
    assert e.value.code == "domain_not_found"


async def test_forbidden_domain_and_no_credits(fake, domain_id, client):
    fake.fail_next(1, 402, server="dds")
    with pytest.raises(PeerRefused) as e:
        await client.list_items(domain_id, {"ids": []})
    assert e.value.code == "no_credits"
    fake.forbid_domain(domain_id)
    with pytest.raises(PeerRefused) as e:
        await client.list_items(domain_id, {"ids": []})
    assert e.value.code == "domain_forbidden"


async def test_domain_server_5xx_is_transient(fake, domain_id, client):
    fake.add_item(domain_id, "x", b"x")
    fake.fail_next(1, 503)
    with pytest.raises(PeerUnavailable) as e:
        await client.download(domain_id, {"ids": []})
    assert e.value.transient and "domain server" in e.value.message and "503" in e.value.message
    assert len(await client.download(domain_id, {"ids": []})) == 1  # next call works


async def test_api_and_dds_5xx_name_their_server(fake, domain_id, client):
    fake.fail_next(1, 500, server="api")
    with pytest.raises(PeerUnavailable, match="Auki API"):
        await client.list_items(domain_id, {"ids": []})
    fake.fail_next(1, 502, server="dds")
    with pytest.raises(PeerUnavailable, match="DDS"):
        await client.list_items(domain_id, {"ids": []})
    assert await client.list_items(domain_id, {"ids": []}) == []
    assert fake.logins == 2  # the failed login was a 500, not a refusal: tried again


async def test_unreachable_api(domain_id):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when we leave: connection refused
    client = DomainClient(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", email=EMAIL, password=PASSWORD)
    try:
        with pytest.raises(PeerUnavailable, match="Auki API.*unreachable"):
            await client.download(domain_id, {"ids": []})
    finally:
        await client.aclose()


async def test_hanging_domain_server_times_out(fake, domain_id):
    fake.add_item(domain_id, "x", b"x")
    client = make_client(fake, timeout=0.3)
    try:
        await client.list_items(domain_id, {"ids": []})  # tokens cached
        fake.mode = "hang"
        with pytest.raises(PeerUnavailable, match="domain server.*timed out"):  # the client's timeout, not ours
            await asyncio.wait_for(client.download(domain_id, {"ids": []}), 1.5)
    finally:
        fake.mode = "ok"
        await client.aclose()


@pytest.mark.parametrize("closing_boundary", [True, False])
@pytest.mark.parametrize("line_ends", ["crlf", "lf"])
@pytest.mark.parametrize("mode", ["broken_multipart", "size_mismatch"])
async def test_broken_multipart(fake, domain_id, client, mode, line_ends, closing_boundary):
    fake.add_item(domain_id, "a", b"a" * 1000)
    b = fake.add_item(domain_id, "b", b"b" * 1000)
    fake.mode, fake.line_ends, fake.closing_boundary = mode, line_ends, closing_boundary
    with pytest.raises(PeerUnavailable) as e:
        await client.download(domain_id, {"ids": []})
    assert e.value.message.startswith("domain server sent a broken multipart body: ")
    assert e.value.transient
    if mode == "broken_multipart":  # cut in the middle of the last part: lenient framing still says so
        assert e.value.message.endswith(f"item {b} ends after 500 of its 1000 bytes (truncated)")
    else:
        assert "is not followed by a boundary" in e.value.message


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("closing_boundary", [True, False])
@pytest.mark.parametrize("line_ends", ["crlf", "lf"])
async def test_multipart_as_the_real_client_reads_it(fake, domain_id, client, line_ends, closing_boundary, chunk_size):
    # LF-only line ends and no closing boundary: the real client frames parts by `size`.
    fake.line_ends, fake.closing_boundary, fake.chunk_size = line_ends, closing_boundary, chunk_size
    datas = [b"", b"\n", b"\r\n", TRICKY, b"last ends in a line end\r\n"]
    want = {fake.add_item(domain_id, f"img{n}", data, "jpg"): data for n, data in enumerate(datas)}
    items = await client.download(domain_id, {"ids": []})
    assert [(i.id, i.data, i.size) for i in items] == [(k, v, len(v)) for k, v in want.items()]


@pytest.mark.parametrize("line_ends", ["crlf", "lf"])
@pytest.mark.parametrize("closing_boundary", [True, False])
async def test_empty_answer_is_no_data(fake, domain_id, client, closing_boundary, line_ends):
    # Nothing matched: only the closing delimiter, or (a server that never closes) an empty body.
    fake.closing_boundary, fake.line_ends = closing_boundary, line_ends
    fake.add_item(domain_id, "x", b"x")
    assert await client.download(domain_id, {"ids": [str(uuid.uuid4())]}) == []
    assert await client.download(domain_id, {"ids": [], "name": "nope"}) == []
    assert await client.download_ids(domain_id, [str(uuid.uuid4())]) == []
    assert fake.bytes_served == []


async def raw_grant(fake, domain_id, http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """The data URL and headers a client has once it holds a domain token, fetched by hand."""
    h = {"posemesh-client-id": "vlm-node", "Content-Type": "application/json"}
    r = await http.post(fake.api_url + "/user/login", json={"email": EMAIL, "password": PASSWORD}, headers=h)
    user = {**h, "Authorization": f"Bearer {r.json()['access_token']}"}
    r = await http.post(fake.api_url + "/service/domains-access-token", headers=user)
    dds = {**h, "Authorization": f"Bearer {r.json()['access_token']}"}
    grant = (await http.post(f"{fake.dds_url}/api/v1/domains/{domain_id}/auth", headers=dds)).json()
    url = f"{grant['domain_server']['url']}/api/v1/domains/{domain_id}/data"
    return url, {"Authorization": f"Bearer {grant['access_token']}", "posemesh-client-id": "vlm-node"}


async def test_fake_writes_multipart_as_go_does(fake, domain_id):
    fake.add_item(domain_id, "a", b"xyz", "jpg")
    async with httpx.AsyncClient() as http:
        url, auth = await raw_grant(fake, domain_id, http)
        want = {**auth, "Accept": "multipart/form-data"}

        async def body(query: str = "") -> tuple[bytes, bytes]:
            r = await http.get(f"{url}?{query}", headers=want)
            assert r.status_code == 200 and "content-length" not in r.headers  # streamed
            boundary = r.headers["content-type"].removeprefix("multipart/form-data; boundary=")
            assert len(boundary) == 60 and int(boundary, 16) >= 0  # Go's random boundary
            return r.content, boundary.encode()

        raw, b = await body()
        assert raw.startswith(b"--" + b + b'\r\nContent-Disposition: form-data; name="a"; data-type="jpg"; ')
        assert raw.endswith(b'"\r\nContent-Type: application/octet-stream\r\n\r\nxyz\r\n--' + b + b"--\r\n")
        raw, b = await body(f"ids={uuid.uuid4()}")
        assert raw == b"\r\n--" + b + b"--\r\n"  # Writer.Close with no part

        fake.line_ends, fake.closing_boundary = "lf", False
        raw, b = await body()
        assert b"\r" not in raw and raw.startswith(b"--" + b + b"\n") and raw.endswith(b"\n\nxyz")
        raw, b = await body(f"ids={uuid.uuid4()}")
        assert raw == b""


async def test_fake_takes_what_the_real_client_sends(fake, domain_id):
    a = fake.add_item(domain_id, "a", b"a", "jpg")
    b = fake.add_item(domain_id, "b", b"b", "jpg")
    h = {"posemesh-client-id": "vlm-node", "Content-Type": "application/json"}
    async with httpx.AsyncClient() as http:
        r = await http.post(fake.api_url + "/user/login", json={"email": EMAIL, "password": PASSWORD}, headers=h)
        bearer = {**h, "Authorization": f"Bearer {r.json()['access_token']}"}
        r = await http.post(fake.api_url + "/service/domains-access-token", headers=bearer)  # no body at all
        assert r.status_code == 200, r.text
        r = await http.post(fake.api_url + "/service/domains-access-token", headers=bearer, content=b"{}")
        assert r.status_code == 200, r.text
        sdk = {"posemesh-sdk-version": "1.5.3", "posemesh-gateway-mac": ""}  # discovery.rs; empty from a browser
        r = await http.post(
            f"{fake.dds_url}/api/v1/domains/{domain_id}/auth",
            headers={**h, **sdk, "Authorization": f"Bearer {r.json()['access_token']}"},
        )
        assert r.status_code == 200, r.text
        url = f"{r.json()['domain_server']['url']}/api/v1/domains/{domain_id}/data"
        auth = {"Authorization": f"Bearer {r.json()['access_token']}", "posemesh-client-id": "vlm-node"}
        for ids in (f"{a},{b}", f"{a}%2C{b}", f"{a}%2c{b}"):
            r = await http.get(f"{url}?ids={ids}", headers={**auth, "Accept": "application/json"})
            assert sorted(m["id"] for m in r.json()["data"]) == sorted([a, b]), ids
    assert [p.body for p in fake.posts[1:]] == [b"", b"{}", b""]
    assert fake.posts[-1].headers["posemesh-sdk-version"] == "1.5.3"
    assert fake.domain_query_strings == [f"ids={a},{b}", f"ids={a}%2C{b}", f"ids={a}%2c{b}"]


# Bodies the fake does not write, to pin the reader's rules down; B is the boundary.
ITEM = (
    'Content-Disposition: form-data; name="n"; data-type="jpg"; id="{id}"; size="{size}"; '
    'created-at="2025-08-10T16:54:41.124336Z"; updated-at="2025-08-10T16:54:41.124336Z"'
)


def part(data: bytes, item_id: str = "i1", eol: bytes = b"\r\n", size: int | str | None = None) -> bytes:
    disposition = ITEM.format(id=item_id, size=len(data) if size is None else size).encode()
    return b"--B" + eol + disposition + eol + b"Content-Type: application/octet-stream" + eol + eol + data


@pytest.mark.parametrize(
    ("body", "want"),
    [
        # the live-server sample in domain_data.rs's tests: indented preamble, LF, epilogue
        (b"\n        " + part(b'{"test": "test"}', eol=b"\n") + b"\n" + part(b"2", "i2", eol=b"\n") + b"\n--B--\n   ",
         [("i1", b'{"test": "test"}'), ("i2", b"2")]),
        # Content-Type first (compute-node's tests), blanks after the boundary (RFC 2046)
        (b'--B  \r\nContent-Type: application/octet-stream\r\n' + part(b"xy")[5:] + b"\r\n--B--", [("i1", b"xy")]),
        (part(b"xy") + b"\r\n--B--\r\nepilogue --B\r\njunk", [("i1", b"xy")]),
        (part(b"xy") + b"\r\n", [("i1", b"xy")]),  # no closing boundary
        (part(b"xy") + b"\n", [("i1", b"xy")]),
        (b"--B--", []),
        (b"\r\n", []),
    ],
)
async def test_reader_accepts(body, want):
    got = await _read_crafted(body)
    assert [(i.id, i.data) for i in got] == want


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (part(b"xyz") + b"junk\r\n--B--\r\n", "item i1 is not followed by a boundary: its size 3 is wrong"),
        (part(b"xyz", size=2) + b"\r\n--B--\r\n", "item i1 is not followed by a boundary"),
        (part(b"xyz", size=5) + b"\r\n--B--\r\n", "item i1 is not followed by a boundary"),
        (part(b"xyz", size=9), "item i1 ends after 3 of its 9 bytes (truncated)"),
        (part(b"xy") + b"\r\n--", "the body ended inside a boundary or a part's headers (truncated)"),
        (part(b"xy") + b"\r\n--B", "(truncated)"),
        (part(b"xy") + b"\r\n--B\r\n", "(truncated)"),
        (part(b"xy") + b"\r\n--B\r\nContent-Disposition: form-", "(truncated)"),
        (b"--Bx\r\n" + part(b"xy")[5:], "a boundary line has more after the boundary"),
        (part(b"xy", size="1e3"), "item i1 has a bad size '1e3'"),
        (part(b"xy", size=" 2"), "item i1 has a bad size"),
        (part(b"xy", size="\u0663"), "item i1 has a bad size"),
        (part(b"xy", size="9" * 21), "item i1 has a bad size"),
        (part(b"xy", size=65), "item i1 is larger than 64 bytes (65)"),
        (b"--B\r\nContent-Disposition: form-data; id=\"i\"; name=\"n\"; data-type=\"jpg\"\r\n\r\nxy", "no 'size'"),
        (b"--B\r\nContent-Type: image/jpeg\r\n\r\nxy", "a part has no Content-Disposition"),
        (b"--B\r\nX: " + b"y" * 17_000, "a part's headers are longer than 16384 bytes"),
        (b"hello", "the body has no boundary line"),
        (b"--B-", "(truncated)"),
    ],
)
async def test_reader_refuses(body, error):
    with pytest.raises(PeerUnavailable) as e:
        await _read_crafted(body)
    assert e.value.message.startswith("domain server sent a broken multipart body: ")
    assert error in e.value.message and "\n" not in e.value.message


async def test_reader_content_type():
    assert await _read_crafted(b"", content_type="text/plain") == []  # empty: no data, whatever its type
    with pytest.raises(PeerUnavailable, match="content type 'text/plain'"):
        await _read_crafted(part(b"xy"), content_type="text/plain")
    with pytest.raises(PeerUnavailable, match="content type 'multipart/form-data'"):
        await _read_crafted(part(b"xy"), content_type="multipart/form-data")


async def _read_crafted(body: bytes, content_type: str = "multipart/form-data; boundary=B") -> list[DataItem]:
    """Answer the data request with `body`, byte by byte, through an in-process transport."""

    class Bytewise(httpx.AsyncByteStream):
        async def __aiter__(self):
            for n in range(len(body)):
                yield body[n : n + 1]

    def handler(request: httpx.Request) -> httpx.Response:
        token = "e30." + base64.urlsafe_b64encode(json.dumps({"exp": int(time.time()) + 3600}).encode()).decode() + ".s"
        if request.url.path.endswith("/auth"):
            return httpx.Response(200, json={"domain_server": {"url": "http://domain.test"}, "access_token": token})
        if request.url.path.endswith("/data"):
            return httpx.Response(200, headers={"content-type": content_type}, stream=Bytewise())
        return httpx.Response(200, json={"access_token": token, "refresh_token": token})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = DomainClient("http://api.test", "http://dds.test", email="e", password="p", http=http,
                              max_item_bytes=64)
        return await client.download(GOOD_ID, {"ids": []})


async def test_client_id_is_sent_everywhere(fake, domain_id):
    fake.expected_client_id = "someone-else"  # the fake answers 400 to other client ids
    client = make_client(fake)
    try:
        with pytest.raises(PeerRefused, match="400"):
            await client.list_items(domain_id, {"ids": []})
    finally:
        await client.aclose()


async def test_shared_http_client_is_not_closed(fake, domain_id):
    async with httpx.AsyncClient() as http:
        client = make_client(fake, http=http)
        assert await client.list_items(domain_id, {"ids": []}) == []
        await client.aclose()
        assert not http.is_closed


# --------------------------------------------------------------------------- validation


GOOD_ID = "3c5bbdbc-65b9-4f11-93b6-a3e535d63990"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "query.ids is required"),
        ({"name": "x"}, "query.ids is required"),
        ({"ids": GOOD_ID}, "query.ids must be a list"),
        ({"ids": None}, "query.ids must be a list"),
        ({"ids": [GOOD_ID, 7]}, r"query.ids\[1\] must be a string"),
        ({"ids": ["not-a-uuid"]}, r"query.ids\[0\] is not a UUID"),
        ({"ids": [GOOD_ID + "0"]}, r"query.ids\[0\] is not a UUID"),
        ({"ids": [], "name": "a/b"}, "query.name contains forbidden characters: /"),
        ({"ids": [], "name": "x;y=1"}, "query.name contains forbidden characters"),
        ({"ids": [], "data_type": "jpg?"}, "query.data_type contains forbidden characters"),
        ({"ids": [], "name": 3}, "query.name must be a string"),
        ({"ids": [], "name": ""}, "query.name must not be empty"),
        ({"ids": [], "limit": 3}, "unknown keys: limit"),
        ([GOOD_ID], "query must be an object"),
        ({"ids": [GOOD_ID] * 10_001}, "max 10000"),
    ],
)
def test_validate_query_rejects(query, message):
    with pytest.raises(BadInput, match=message):
        validate_query(query)


def test_validate_query_accepts():
    q = validate_query({"ids": [GOOD_ID.upper(), GOOD_ID], "name": "photo_1", "data_type": "jpg"})
    assert q == DomainQuery(ids=(GOOD_ID,), name="photo_1", data_type="jpg")
    assert q.to_dict() == {"ids": [GOOD_ID], "name": "photo_1", "data_type": "jpg"}
    assert validate_query({"ids": []}) == DomainQuery()
    assert validate_query(q) is q


async def test_bad_domain_id_is_bad_input_before_any_request(fake, client):
    with pytest.raises(BadInput, match="domain_id must be a UUID"):
        validate_domain_id("../etc")
    with pytest.raises(BadInput):
        await client.download("not-a-domain", {"ids": []})
    with pytest.raises(BadInput):
        await client.list_items(GOOD_ID, {"ids": "x"})
    assert fake.logins == 0


# --------------------------------------------------------------------------- images and time


def _item(name: str, data_type: str = "jpg", created_at: datetime | None = None) -> DataItem:
    created = created_at or datetime(2025, 8, 11, 9, 0, tzinfo=UTC)
    return DataItem(GOOD_ID, GOOD_ID, name, data_type, 0, created, created)


def test_capture_time_order():
    created = datetime(2025, 8, 11, 9, 0, tzinfo=UTC)
    stamped = _item("photo_req_1754816076435_617bqy2_20250810_165440", created_at=created)
    exif = datetime(2025, 8, 10, 18, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    assert capture_time(stamped, exif) == datetime(2025, 8, 10, 16, 0, 1, tzinfo=UTC)
    assert capture_time(stamped, exif).tzinfo == UTC
    assert capture_time(stamped, datetime(2025, 8, 10, 7, 0)) == datetime(2025, 8, 10, 7, 0, tzinfo=UTC)
    assert capture_time(stamped, None) == datetime(2025, 8, 10, 16, 54, 40, tzinfo=UTC)
    assert capture_time(_item("photo_20251399_999999", created_at=created), None) == created  # not a date
    assert capture_time(_item("IMG_0001", created_at=created), None) == created
    naive = _item("x", created_at=datetime(2025, 1, 1, 12, 0))
    assert capture_time(naive, None) == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_images_only():
    items = [_item("a", "jpg"), _item("b", "JPEG"), _item("c", "png"), _item("d", "mp4"), _item("e", "json")]
    assert [i.name for i in images_only(items)] == ["a", "b", "c"]


# --------------------------------------------------------------------------- the fake's other endpoints


async def test_fake_upload_and_raw(fake, domain_id):
    async with httpx.AsyncClient() as http:
        url, auth = await raw_grant(fake, domain_id, http)

        def body(disposition: str, data: bytes) -> tuple[bytes, dict]:
            raw = (
                b"--XYZ\r\nContent-Disposition: " + disposition.encode() + b"\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XYZ--\r\n"
            )
            return raw, {**auth, "Content-Type": "multipart/form-data; boundary=XYZ"}

        raw, hdrs = body('form-data; name="up"; data-type="png"', b"\x89PNG1")
        r = await http.post(url, content=raw, headers=hdrs)
        assert r.status_code == 200, r.text
        [meta] = r.json()["data"]
        assert (meta["name"], meta["data_type"], meta["size"]) == ("up", "png", 5)
        assert (await http.post(url, content=raw, headers=hdrs)).status_code == 409
        raw, hdrs = body(f'form-data; name="{meta["id"]}"; id="{meta["id"]}"', b"\x89PNG22")
        r = await http.put(url, content=raw, headers=hdrs)
        assert r.status_code == 200 and r.json()["data"][0]["size"] == 6
        r = await http.get(f"{url}/{meta['id']}", params={"raw": "true"}, headers=auth)
        assert r.content == b"\x89PNG22"
        r = await http.get(url, headers={**auth, "Accept": "application/json"})
        assert r.json()["data"][0]["id"] == meta["id"]
        r = await http.get(url, headers={"Authorization": "Bearer nope", "Accept": "application/json"})
        assert r.status_code == 400  # no client id
        r = await http.get(url, headers={**auth, "Authorization": "Bearer a.b.c", "Accept": "application/json"})
        assert (r.status_code, r.text) == (403, INVALID_DOMAIN_TOKEN)  # basic.test.ts: 403, not 401


# --------------------------------------------------------------------------- uploads


def uploads(fake) -> list[tuple[str, dict[str, str]]]:
    """Each upload the fake took: its method and its part's Content-Disposition parameters."""
    return [(u.method, u.parts[0].disposition) for u in fake.upload_requests]


async def test_upload_creates_the_item_as_the_real_client_does(fake, domain_id):
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        if request.method in ("POST", "PUT") and request.url.path.endswith("/data"):
            sent.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [keep]}) as http:
        client = make_client(fake, http=http)
        item = await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b'{"a":1}')
    assert (item.name, item.data_type, item.size, item.data) == ("result_1", "vlm_job_result_json", 7, None)
    held = [(i["id"], i["name"], i["data_type"], i["size"]) for i in fake.items(domain_id)]
    assert held == [(item.id, "result_1", "vlm_job_result_json", 7)]
    assert fake.item_data(domain_id, item.id) == b'{"a":1}'
    # Looked up by name first (metadata only), then created.
    assert fake.domain_queries[-1] == {"name": "result_1"}
    [request] = sent
    assert request.url.path == f"/domain-svc/api/v1/domains/{domain_id}/data"
    assert request.headers["authorization"].startswith("Bearer ")
    assert request.headers["posemesh-client-id"] == "vlm-node"
    boundary = request.headers["content-type"].removeprefix("multipart/form-data; boundary=")
    body = b"".join(request.stream)
    # core/domain-http/src/domain_data.rs write_create_body, then the closing delimiter.
    assert body == (
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: form-data; name="result_1"; data-type="vlm_job_result_json"\r\n\r\n'
        f'{{"a":1}}\r\n--{boundary}--\r\n'
    ).encode()
    assert int(request.headers["content-length"]) == len(body)


async def test_upload_again_updates_the_same_item_by_id(fake, domain_id, client):
    first = await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"one")
    second = await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"second")
    assert second.id == first.id and second.size == 6
    assert [i["id"] for i in fake.items(domain_id)] == [first.id]
    assert fake.item_data(domain_id, first.id) == b"second"
    # write_update_body: the part names the item by id alone.
    assert uploads(fake) == [
        ("POST", {"name": "result_1", "data-type": "vlm_job_result_json"}),
        ("PUT", {"id": first.id}),
    ]


async def test_an_upload_whose_answer_was_lost_is_not_made_twice(fake, domain_id, client):
    fake.fail_uploads(1, 504, stored=True)  # stored, then a gateway's 504 on the way back
    with pytest.raises(PeerUnavailable, match="answered 504"):
        await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"v1")
    item = await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"v1")
    assert [i["id"] for i in fake.items(domain_id)] == [item.id]
    assert [m for m, _ in uploads(fake)] == ["POST", "PUT"]


async def test_an_upload_that_failed_before_storing_creates_it_next_time(fake, domain_id, client):
    fake.fail_uploads(1, 503)
    with pytest.raises(PeerUnavailable, match="answered 503"):
        await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"v1")
    assert fake.items(domain_id) == []
    item = await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"v1")
    assert [i["id"] for i in fake.items(domain_id)] == [item.id]


async def test_concurrent_uploads_of_one_name_make_one_item(fake, domain_id, client):
    # Whichever create comes second is refused with 409 and updates the first one's item instead.
    items = await asyncio.gather(
        *(client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"x%d" % n) for n in range(4))
    )
    assert len({i.id for i in items}) == 1 and len(fake.items(domain_id)) == 1


async def test_an_item_deleted_between_look_up_and_update_is_created(fake, domain_id, client, monkeypatch):
    gone = DataItem(str(uuid.uuid4()), domain_id, "result_1", "vlm_job_result_json", 1, datetime.now(UTC),
                    datetime.now(UTC))
    looks = iter([gone, None])

    async def find(_domain_id, _name):
        return next(looks)

    monkeypatch.setattr(client, "_find_by_name", find)
    item = await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"v1")
    assert [m for m, _ in uploads(fake)] == ["PUT", "POST"] and item.id != gone.id


async def test_an_item_of_that_name_and_another_type_is_left_alone(fake, domain_id, client):
    theirs = fake.add_item(domain_id, "result_1", b"theirs", "csv")
    with pytest.raises(PeerRefused, match="already holds an item named result_1 of type csv") as info:
        await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"ours")
    assert info.value.code == "item_exists" and fake.upload_requests == []
    assert fake.item_data(domain_id, theirs) == b"theirs"


async def test_a_token_expired_at_upload_is_regranted_once(fake, domain_id, client):
    await client.list_items(domain_id, {"ids": []})  # holds a domain token now
    grants = fake.dds_grants
    fake.refuse_domain_tokens(1, writes_only=True)
    item = await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"v1")
    assert fake.dds_grants == grants + 1 and [i["id"] for i in fake.items(domain_id)] == [item.id]


async def test_a_read_only_account_is_refused_for_good(fake, domain_id, client):
    fake.read_only = True  # its domain tokens may read, not write: 403 "invalid domain access token"
    with pytest.raises(PeerRefused, match="may read this domain but not write") as info:
        await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"v1")
    assert info.value.code == "domain_forbidden" and INVALID_DOMAIN_TOKEN in info.value.message
    assert fake.items(domain_id) == [] and fake.dds_grants == 2  # re-granted once, refused again


async def test_an_item_over_the_servers_limit_is_too_large(fake, domain_id, client):
    from devpeers.fake_posemesh import MAX_ITEM_BYTES

    with pytest.raises(PeerRefused, match=f"{MAX_ITEM_BYTES + 1} bytes as too large") as info:
        await client.upload_item(domain_id, "result_1", "vlm_job_result_json", b"x" * (MAX_ITEM_BYTES + 1))
    assert info.value.code == "too_large" and fake.items(domain_id) == []


@pytest.mark.parametrize(
    "name, data_type, message",
    [
        ("", "json", "item name must not be empty"),
        ("a/b", "json", "item name contains forbidden characters: /"),
        ("ok", 'j"son', 'item data_type contains forbidden characters: "'),
        ("a\r\nb", "json", "item name contains control characters"),
    ],
)
async def test_bad_item_names_are_refused_before_any_request(fake, domain_id, client, name, data_type, message):
    with pytest.raises(BadInput, match=message):
        await client.upload_item(domain_id, name, data_type, b"v1")
    assert fake.domain_requests == 0 and fake.logins == 0
