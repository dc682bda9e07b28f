"""server/domain.py against the fake posemesh over real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from server.domain import (
    DataItem,
    DomainClient,
    DomainQuery,
    capture_time,
    images_only,
    validate_domain_id,
    validate_query,
)
from server.errors import BadInput, PeerRefused, PeerUnavailable
from tests.peers.fake_posemesh import FakePosemesh

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


# --------------------------------------------------------------------------- tokens


async def test_expired_tokens_are_refreshed_not_relogged(domain_id, fake):
    fake.token_ttl = 2
    fake.add_item(domain_id, "x", b"x")
    client = make_client(fake, token_margin=0.9)
    try:
        await client.download(domain_id, {"ids": []})
        await client.download(domain_id, {"ids": []})  # all cached
        assert (fake.logins, fake.refreshes, fake.dds_tokens, fake.dds_grants) == (1, 0, 1, 1)
        await asyncio.sleep(1.15)  # every token now has < 0.9 s left
        [item] = await client.download(domain_id, {"ids": []})
        assert item.data == b"x"
        assert (fake.logins, fake.refreshes, fake.dds_tokens, fake.dds_grants) == (1, 1, 2, 2)
    finally:
        await client.aclose()


async def test_401_from_domain_server_regrants_once(fake, domain_id, client):
    fake.add_item(domain_id, "x", b"x")
    await client.download(domain_id, {"ids": []})
    fake.mode = "expire_tokens"
    [item] = await client.download(domain_id, {"ids": []})
    assert item.data == b"x"
    assert (fake.logins, fake.dds_tokens, fake.dds_grants, fake.downloads) == (1, 1, 2, 2)


async def test_revoked_tokens_fall_back_through_every_layer(fake, domain_id, client):
    fake.add_item(domain_id, "x", b"x")
    await client.list_items(domain_id, {"ids": []})
    fake.revoke_all_tokens()  # domain, DDS, user and refresh tokens all rejected now
    [item] = await client.list_items(domain_id, {"ids": []})
    assert item.name == "x"
    assert (fake.logins, fake.refreshes, fake.dds_tokens, fake.dds_grants) == (2, 1, 3, 3)


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


@pytest.mark.parametrize("mode", ["broken_multipart", "size_mismatch"])
async def test_broken_multipart(fake, domain_id, client, mode):
    fake.add_item(domain_id, "a", b"a" * 1000)
    fake.add_item(domain_id, "b", b"b" * 1000)
    fake.mode = mode
    with pytest.raises(PeerUnavailable) as e:
        await client.download(domain_id, {"ids": []})
    assert e.value.message.startswith("domain server sent a broken multipart body: ")
    assert e.value.transient


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
    h = {"posemesh-client-id": "vlm-node", "Content-Type": "application/json"}
    async with httpx.AsyncClient() as http:
        r = await http.post(fake.api_url + "/user/login", json={"email": EMAIL, "password": PASSWORD}, headers=h)
        user = r.json()["access_token"]
        r = await http.post(fake.api_url + "/service/domains-access-token", headers={**h, "Authorization": f"Bearer {user}"})
        dds = r.json()["access_token"]
        r = await http.post(f"{fake.dds_url}/api/v1/domains/{domain_id}/auth", headers={**h, "Authorization": f"Bearer {dds}"})
        grant = r.json()
        url = f"{grant['domain_server']['url']}/api/v1/domains/{domain_id}/data"
        auth = {"Authorization": f"Bearer {grant['access_token']}", "posemesh-client-id": "vlm-node"}

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
        assert r.status_code == 401
