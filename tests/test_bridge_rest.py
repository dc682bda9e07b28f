"""The REST bridge over real sockets: uvicorn serving the bridge app in the
test's event loop, a gRPC node behind it, httpx in front of it."""

import asyncio
import contextlib
import json
import uuid
from datetime import datetime

import httpx
import pytest

from devpeers.ports import free_port
from server.bridge import rest
from tests.fixtures import DOMAIN_ID, running_bridge, wait_for

INPUT = {"prompt": "When was the red box on the shelf?", "vlm_prompt": "Describe the image", "webhook_url": ""}
JOB_KEYS = ["id", "status", "job_type", "domain_id", "query", "input", "output", "error", "created_at", "updated_at"]
EXTRA_KEYS = ["attempts", "max_attempts", "priority"]
STATUS_ORDER = ["pending", "running", "completing", "uploading", "completed"]
JSON = {"Content-Type": "application/json"}


def create_body(**kw) -> dict:
    body = {"job_type": "task_timing_v1", "query": {"ids": []}, "domain_id": DOMAIN_ID, "input": INPUT}
    body.update(kw)
    return body


@contextlib.asynccontextmanager
async def bridge_client(target: str, **app_options):
    async with running_bridge(target, **app_options) as base:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=15) as client:
            yield client


@pytest.fixture
async def http(node):
    async with bridge_client(f"127.0.0.1:{node.port}") as client:
        yield client


async def create(http: httpx.AsyncClient, **kw) -> dict:
    response = await http.post("/api/v1/jobs", json=create_body(**kw))
    assert response.status_code == 200, response.text
    return response.json()


async def all_jobs(http: httpx.AsyncClient) -> list[dict]:
    response = await http.get("/api/v1/jobs", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return response.json()


def check_job_shape(job: dict) -> None:
    assert list(job) == JOB_KEYS + EXTRA_KEYS
    assert job["status"] in ("pending", "running", "completing", "uploading", "completed", "failed", "cancelling", "cancelled")
    uuid.UUID(job["id"])
    for key in ("created_at", "updated_at"):
        assert job[key].endswith("Z"), job[key]
        assert datetime.fromisoformat(job[key].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    # The original's error: a numeric code (100, 200 or 400), the node's own as `reason`.
    assert job["error"] is None or (list(job["error"]) == ["code", "reason", "message"]
                                    and job["error"]["code"] in (100, 200, 400))
    assert isinstance(job["query"], dict) and isinstance(job["input"], dict)


def check_error(response: httpx.Response, status: int, match: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert match.lower() in body["error"].lower(), body["error"]
    assert len(body["error"].splitlines()) == 1 and "Traceback" not in body["error"], body["error"]


async def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """The events of an SSE response, to its end."""
    events, name, data = [], None, []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if line == "":
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = None, []
        elif line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())
    return events


# Happy paths.


async def test_create_get_list_cancel_retry(http, settings):
    job = await create(http)
    check_job_shape(job)
    assert job["status"] == "pending" and job["job_type"] == "task_timing_v1" and job["domain_id"] == DOMAIN_ID
    assert job["query"] == {"ids": []} and job["input"] == INPUT
    assert job["output"] is None and job["error"] is None
    assert job["attempts"] == 0 and job["max_attempts"] == settings.job_max_attempts and job["priority"] == 0

    got = await http.get(f"/api/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json() == job
    listed = await http.get("/api/v1/jobs", params={"limit": 10})
    assert listed.status_code == 200 and listed.json() == [job]

    cancelled = await http.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    check_job_shape(cancelled.json())
    assert cancelled.json()["status"] == "cancelled"
    # Cancelling again is harmless, and an empty object is a fine body too.
    again = await http.post(f"/api/v1/jobs/{job['id']}/cancel", json={})
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    new_input = {**INPUT, "prompt": "When was the blue box there?"}
    retried = await http.put(f"/api/v1/jobs/{job['id']}", json={"job_type": "task_timing_v1", "input": new_input})
    assert retried.status_code == 200, retried.text
    check_job_shape(retried.json())
    assert retried.json()["status"] == "pending" and retried.json()["input"] == new_input
    assert retried.json()["id"] == job["id"]


async def test_retry_as_the_original_ui_sends_it(http, posemesh):
    # Its Retry button: PUT {job_type, query: {ids}, domain_id, input} from the job's own fields
    # (ui/src/js/jobManager.js createJobData; the ids read back from the form, one a line).
    ids = [item["id"] for item in posemesh.items(DOMAIN_ID)][:2]
    for query in ({"ids": []}, {"ids": ids}):
        job = await create(http, query=query)
        await http.post(f"/api/v1/jobs/{job['id']}/cancel")
        sent_ids = [line for line in "\n".join(reversed(query["ids"])).split("\n") if line.strip()]
        body = {"job_type": "task_timing_v1", "query": {"ids": sent_ids}, "domain_id": DOMAIN_ID.upper(),
                "input": {"vlm_prompt": "Describe", "prompt": "When?", "webhook_url": ""}}
        retried = await http.put(f"/api/v1/jobs/{job['id']}", content=json.dumps(body), headers=JSON)
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "pending" and retried.json()["input"] == body["input"]
        assert retried.json()["query"] == job["query"]


async def test_a_failed_job_says_the_original_numeric_code_and_its_reason(http, worker, posemesh):
    bad_id = posemesh.add_item(DOMAIN_ID, "photo_broken_20250810_170000", b"\xff\xd8\xff garbage")
    job = await create(http, query={"ids": [bad_id]})

    async def failed():
        got = (await http.get(f"/api/v1/jobs/{job['id']}")).json()
        return got if got["status"] == "failed" else None

    error = (await wait_for(failed))["error"]
    assert (error["code"], error["reason"]) == (400, "no_images"), error  # the original's "No images found"
    assert error["message"]


async def test_a_limit_of_0_lists_nothing_as_the_original_did(http):
    await create(http)
    assert (await http.get("/api/v1/jobs", params={"limit": 0})).json() == []
    assert len((await http.get("/api/v1/jobs", params={"limit": ""})).json()) == 1  # empty: the default page
    assert len((await http.get("/api/v1/jobs")).json()) == 1


async def test_create_options_and_idempotency(http, posemesh):
    ids = [item["id"] for item in posemesh.items(DOMAIN_ID)][:2]
    body = create_body(query={"ids": ids}, idempotency_key="order-17", priority=3, max_attempts=2)
    first = await http.post("/api/v1/jobs", json=body)
    second = await http.post("/api/v1/jobs", json=body)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert sorted(first.json()["query"]["ids"]) == sorted(ids)
    assert first.json()["priority"] == 3 and first.json()["max_attempts"] == 2
    assert len(await all_jobs(http)) == 1


async def test_list_filters(http):
    a = await create(http)
    b = await create(http, job_type="vlm_only", input={"vlm_prompt": "hi"})
    assert (await http.post(f"/api/v1/jobs/{a['id']}/cancel")).status_code == 200

    async def ids(**params) -> list[str]:
        response = await http.get("/api/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)
        return [j["id"] for j in response.json()]

    assert await ids() == [b["id"], a["id"]]
    assert await ids(status="cancelled") == [a["id"]]
    assert await ids(status="pending") == [b["id"]]
    assert await ids(status="completed") == []
    assert await ids(job_type="vlm_only") == [b["id"]]
    assert await ids(job_type="task_timing_v1", status="cancelled") == [a["id"]]
    assert await ids(limit=1) == [b["id"]]
    assert await ids(limit=1, offset=1) == [a["id"]]
    assert await ids(offset=2) == []


# Bad input: refused with a clear line, and nothing stored changes.


async def test_bad_requests_are_refused_and_change_nothing(http):
    pending = await create(http)
    finished = await create(http)
    await http.post(f"/api/v1/jobs/{finished['id']}/cancel")
    before = await all_jobs(http)
    huge = b'{"job_type": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    async def chunked():
        for _ in range(40):
            yield b" " * 65536

    missing = str(uuid.uuid4())
    create_cases = [
        (dict(content=b"{not json", headers=JSON), 400, "request body is not valid JSON"),
        (dict(content=b"\xff\xfe\x00garbage", headers=JSON), 400, "not valid JSON"),
        (dict(content=b"[" * 100000, headers=JSON), 400, "not valid JSON"),
        (dict(content=b"", headers=JSON), 400, "empty"),
        (dict(json=[create_body()]), 400, "must be a JSON object"),
        (dict(json="task_timing_v1"), 400, "must be a JSON object"),
        (dict(json={k: v for k, v in create_body().items() if k != "job_type"}), 400, "job_type is required"),
        (dict(json=create_body(job_type=5)), 400, "job_type must be a string"),
        (dict(json=create_body(job_type="task_timing_v9")), 400, "unknown job_type"),
        (dict(json=create_body(query="abc")), 400, "query must be an object"),
        (dict(json=create_body(query=[])), 400, "query must be an object"),
        (dict(json=create_body(input="abc")), 400, "input must be an object"),
        (dict(json=create_body(domain_id=42)), 400, "domain_id must be a string"),
        (dict(json=create_body(domain_id="../etc")), 400, "domain_id must be a UUID"),
        (dict(json=create_body(domain_id="")), 400, "domain_id must be a UUID"),
        (dict(json=create_body(priority="high")), 400, "priority must be an integer"),
        (dict(json=create_body(priority=2**40)), 400, "priority is out of range"),
        (dict(json=create_body(max_attempts=True)), 400, "max_attempts must be an integer"),
        (dict(json=create_body(max_attempts=1.5)), 400, "max_attempts must be an integer"),
        (dict(json=create_body(max_attempts=-1)), 400, "max_attempts"),
        (dict(json=create_body(idempotency_key=["k"])), 400, "idempotency_key must be a string"),
        (dict(json={**create_body(), "jobtype": "x"}), 400, "unknown field(s) in request body: jobtype"),
        (dict(json=create_body(input={**INPUT, "promt": "x"})), 400, "unknown input field"),
        (dict(json=create_body(query={"ids": [1]})), 400, "query.ids[0] must be a string"),
        (dict(content=json.dumps(create_body()).replace('"ids": []', '"ids": [NaN]'), headers=JSON), 400, "not valid JSON"),
        (dict(content=json.dumps(create_body()).replace('"ids": []', '"ids": [], "n": 1e400'), headers=JSON), 400, "out of range"),
        (dict(json=create_body(input={"a": json.loads("[" * 40 + "]" * 40)})), 400, "nested"),
        (dict(json=create_body(query={"ids": [missing]})), 400, "No data found"),
        (dict(json=create_body(domain_id=missing)), 400, "domain"),
        (dict(content=huge, headers=JSON), 413, "larger than"),
        (dict(content=chunked(), headers=JSON), 413, "larger than"),
    ]
    list_cases = [
        ({"limit": "abc"}, "limit must be a non-negative integer"),
        ({"limit": "-1"}, "limit must be a non-negative integer"),
        ({"limit": "1.5"}, "limit must be a non-negative integer"),
        ({"limit": "99999999"}, "limit must be between 1 and 1000"),
        ({"limit": "99999999999999999999"}, "limit is out of range"),
        ({"offset": "-5"}, "offset must be a non-negative integer"),
        ({"status": "bogus"}, "unknown status 'bogus'; expected one of pending, running"),
        ({"status": "JOB_STATUS_PENDING"}, "unknown status"),
        ({"job_type": "x' OR 1=1 --"}, "unknown job_type"),
    ]
    for params, match in list_cases:
        check_error(await http.get("/api/v1/jobs", params=params), 400, match)

    for kwargs, status, match in create_cases:
        check_error(await http.post("/api/v1/jobs", **kwargs), status, match)
        assert await all_jobs(http) == before, kwargs

    for bad_id in (missing, "nope", "x" * 500):
        for response in (
            await http.get(f"/api/v1/jobs/{bad_id}"),
            await http.get(f"/api/v1/jobs/{bad_id}/events"),
            await http.post(f"/api/v1/jobs/{bad_id}/cancel"),
            await http.put(f"/api/v1/jobs/{bad_id}", json={"job_type": "vlm_only", "input": {"vlm_prompt": "x"}}),
        ):
            check_error(response, 404, "not found")
        assert await all_jobs(http) == before

    retry_cases = [
        (finished["id"], dict(json={"job_type": "vlm_only", "input": {"vlm_prompt": "x"}}), 400, "task_timing_v1 job"),
        (pending["id"], dict(json={"job_type": "task_timing_v1", "input": INPUT}), 400, "only a finished job"),
        (finished["id"], dict(content=b"{nope", headers=JSON), 400, "not valid JSON"),
        (finished["id"], dict(json=[]), 400, "must be a JSON object"),
        (finished["id"], dict(json={"input": INPUT}), 400, "job_type is required"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": "x"}), 400, "input must be an object"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": {"prompt": "x"}}), 400, "vlm_prompt"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": INPUT, "id": "x"}), 400, "unknown field"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": {"\x1e": 2**60}}), 400,
         "input.'\\x1e' is a number out of range"),
        (finished["id"], dict(content=huge, headers=JSON), 413, "larger than"),
        # What the original UI sends back with a retry must be the job's own.
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": INPUT, "domain_id": missing}), 400,
         "domain_id differs from the job's"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": INPUT, "query": {"ids": [missing]}}), 400,
         "query.ids differs from the job's"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": INPUT, "query": {"ids": [], "name": "x"}}),
         400, "query.name differs"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": INPUT, "domain_id": "nope"}), 400,
         "domain_id must be a UUID"),
        (finished["id"], dict(json={"job_type": "task_timing_v1", "input": INPUT, "query": {"ids": "x"}}), 400,
         "query.ids must be a list"),
    ]
    for job_id, kwargs, status, match in retry_cases:
        check_error(await http.put(f"/api/v1/jobs/{job_id}", **kwargs), status, match)
        assert await all_jobs(http) == before, kwargs

    cancel_cases = [
        (dict(content=b"{nope", headers=JSON), 400, "not valid JSON"),
        (dict(json=[1]), 400, "must be a JSON object"),
        (dict(json={"reason": "x"}), 400, "unknown field"),
    ]
    for kwargs, status, match in cancel_cases:
        check_error(await http.post(f"/api/v1/jobs/{pending['id']}/cancel", **kwargs), status, match)
        assert await all_jobs(http) == before, kwargs

    assert await all_jobs(http) == before


# A hostile web page: only JSON bodies, and only from pages the node allows.


async def test_writes_must_be_json(http):
    """A form or text/plain body goes cross-origin without a CORS preflight:
    the bridge takes none of them."""
    body = json.dumps(create_body())
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "text/plain;charset=UTF-8"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "application/jsonx"},
        {},  # a body without a type
    ):
        check_error(await http.post("/api/v1/jobs", content=body, headers=headers), 415,
                    "Content-Type must be application/json")
    check_error(await http.post("/api/v1/jobs", data={"job_type": "vlm_only"}), 415, "application/json")
    assert await all_jobs(http) == []
    job = await create(http)
    check_error(await http.put(f"/api/v1/jobs/{job['id']}", content="{}", headers={"Content-Type": "text/plain"}),
                415, "application/json")
    check_error(await http.post(f"/api/v1/jobs/{job['id']}/cancel", content="{}", headers={"Content-Type": "text/plain"}),
                415, "application/json")
    assert (await http.get(f"/api/v1/jobs/{job['id']}")).json()["status"] == "pending"
    # JSON with its charset is fine, and a cancel may come without any body (and so without a type).
    charset = await http.post("/api/v1/jobs", content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert charset.status_code == 200, charset.text
    assert (await http.post(f"/api/v1/jobs/{job['id']}/cancel")).json()["status"] == "cancelled"


async def test_cors_for_allowed_pages(http):
    for origin in ("http://localhost:5173", "https://127.0.0.1:8443", "http://[::1]:3000", str(http.base_url)):
        preflight = await http.options("/api/v1/jobs", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type",
        })
        assert preflight.status_code == 204, (origin, preflight.text)
        assert preflight.headers["access-control-allow-origin"] == origin
        assert set(preflight.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST", "PUT"}
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
        assert "origin" in preflight.headers["vary"].lower()
        listed = await http.get("/api/v1/jobs", headers={"Origin": origin})
        assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == origin
        assert "origin" in listed.headers["vary"].lower()
    created = await http.post("/api/v1/jobs", json=create_body(), headers={"Origin": "http://localhost:8000"})
    assert created.status_code == 200, created.text


async def test_foreign_pages_are_refused(http):
    before = await all_jobs(http)
    job = await create(http)
    for origin in ("https://evil.example", "http://localhost.evil.example", "null", "http://127.0.0.1.nip.io:8080"):
        headers = {"Origin": origin}
        preflight = await http.options("/api/v1/jobs", headers={**headers, "Access-Control-Request-Method": "POST"})
        check_error(preflight, 403, "not allowed")
        assert "access-control-allow-origin" not in preflight.headers
        for response in (
            await http.get("/api/v1/jobs", headers=headers),
            await http.get(f"/api/v1/jobs/{job['id']}", headers=headers),
            await http.get(f"/api/v1/jobs/{job['id']}/events", headers=headers),
            await http.post("/api/v1/jobs", json=create_body(), headers=headers),
            await http.post(f"/api/v1/jobs/{job['id']}/cancel", headers=headers),
            await http.put(f"/api/v1/jobs/{job['id']}", json={"job_type": "task_timing_v1", "input": INPUT},
                           headers=headers),
        ):
            check_error(response, 403, "not allowed")
            assert "access-control-allow-origin" not in response.headers
    assert await all_jobs(http) == [job, *before]
    # Open paths still answer a foreign page (without CORS headers: its script cannot read them).
    health = await http.get("/health", headers={"Origin": "https://evil.example"})
    assert health.status_code == 200 and "access-control-allow-origin" not in health.headers


async def test_allowed_origins_setting(node):
    from server.bridge.auth import Origins

    async with bridge_client(f"127.0.0.1:{node.port}", origins=Origins("https://dash.example.com")) as http:
        ok = await http.get("/api/v1/jobs", headers={"Origin": "https://dash.example.com"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://dash.example.com"
        # The list replaces the default: localhost pages are now foreign; the node's own origin never is.
        check_error(await http.get("/api/v1/jobs", headers={"Origin": "http://localhost:5173"}), 403, "not allowed")
        check_error(await http.get("/api/v1/jobs", headers={"Origin": "http://dash.example.com"}), 403, "not allowed")
        own = await http.get("/api/v1/jobs", headers={"Origin": str(http.base_url).rstrip("/")})
        assert own.status_code == 200
        # Behind a proxy that sends its own Host, the page's host comes as X-Forwarded-Host.
        proxied = await http.get("/api/v1/jobs", headers={"Origin": "https://node.example.com",
                                                          "X-Forwarded-Host": "node.example.com"})
        assert proxied.status_code == 200
        check_error(await http.get("/api/v1/jobs", headers={"Origin": "https://node.example.com",
                                                            "X-Forwarded-Host": "other.example.com"}), 403, "not allowed")
    async with bridge_client(f"127.0.0.1:{node.port}", origins=Origins("*")) as http:
        anyone = await http.get("/api/v1/jobs", headers={"Origin": "https://anyone.example"})
        assert anyone.status_code == 200 and anyone.headers["access-control-allow-origin"] == "https://anyone.example"


async def test_answers_are_never_sniffed(http):
    job = await create(http)
    responses = [
        await http.get("/api/v1/jobs"),
        await http.get(f"/api/v1/jobs/{job['id']}"),
        await http.get("/api/v1/jobs/nope"),
        await http.post("/api/v1/jobs", content="x", headers={"Content-Type": "text/plain"}),
        await http.delete("/api/v1/jobs"),
        await http.get("/openapi.json"),
        await http.get("/metrics"),
        await http.get("/health"),
        await http.get("/ready"),
        await http.get("/api/v1/ws"),
    ]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url
    async with http.stream("GET", f"/api/v1/jobs/{job['id']}/events") as events:
        assert events.headers["x-content-type-options"] == "nosniff"


async def test_a_plain_get_of_the_websocket_is_426(http):
    response = await http.get("/api/v1/ws")
    check_error(response, 426, "WebSocket")
    assert response.headers["upgrade"] == "websocket"


# Server-Sent Events.


async def test_events_follow_a_job_to_cancelled(http):
    job = await create(http)
    async with http.stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        lines = response.aiter_lines()
        # The job as it is, at once.
        first = [await anext(lines) for _ in range(3)]
        assert first[0] == "event: job" and first[2] == ""
        assert json.loads(first[1].removeprefix("data: ")) == job
        assert (await http.post(f"/api/v1/jobs/{job['id']}/cancel")).json()["status"] == "cancelled"
        rest_lines = [line async for line in lines]
    assert rest_lines[0] == "event: job"
    last = json.loads(rest_lines[1].removeprefix("data: "))
    check_job_shape(last)
    assert last["status"] == "cancelled" and last["id"] == job["id"]
    assert [line for line in rest_lines[2:] if line] == []


async def test_events_follow_a_job_to_completed(http, worker, posemesh, fake_ollama):
    fake_ollama.latency = 0.1
    ids = [item["id"] for item in posemesh.items(DOMAIN_ID)][:2]
    job = await create(http, job_type="vlm_only", query={"ids": ids}, input={"vlm_prompt": "What colour?"})
    async with http.stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
        assert response.status_code == 200
        events = await asyncio.wait_for(read_events(response), 20)
    assert {name for name, _ in events} == {"job"}
    statuses = [data["status"] for _, data in events]
    assert statuses[-1] == "completed", events[-1]
    assert statuses == sorted(statuses, key=STATUS_ORDER.index) and len(set(statuses)) == len(statuses)
    done = events[-1][1]
    check_job_shape(done)
    assert sorted(r["image_id"] for r in done["output"]["responses"]) == sorted(ids)
    assert done["error"] is None

    # A completed job cannot be cancelled, and refusing changes nothing.
    before = await all_jobs(http)
    check_error(await http.post(f"/api/v1/jobs/{job['id']}/cancel"), 400, "cannot be cancelled")
    assert await all_jobs(http) == before
    # Watching a finished job sends it once and ends.
    async with http.stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
        assert [data for _, data in await read_events(response)] == [done]


async def test_events_ping_and_client_going_away_ends_the_watch(node):
    async with bridge_client(f"127.0.0.1:{node.port}", sse_ping_interval=0.05) as http:
        job = await create(http)
        async with http.stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
            lines = response.aiter_lines()
            assert await anext(lines) == "event: job"
            seen = []
            while ": ping" not in seen:
                seen.append(await asyncio.wait_for(anext(lines), 5))
            assert node.watcher.watching  # the gRPC watch is open
        # The client went away: the bridge cancels its gRPC call, the node stops watching.
        await wait_for(lambda: not node.watcher.watching, timeout=5)


# The API description.


async def test_openapi_document(http):
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    spec = json.loads(response.content)
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    expected = {
        "/api/v1/jobs": {"get", "post"},
        "/api/v1/jobs/{id}": {"get", "put"},
        "/api/v1/jobs/{id}/cancel": {"post"},
        "/api/v1/jobs/{id}/events": {"get"},
        "/api/v1/ws": {"get"},
        "/health": {"get"},
        "/ready": {"get"},
        "/metrics": {"get"},
        "/openapi.json": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    # Every REST route is described.
    for route in rest.routes:
        for method in route.methods - {"HEAD"}:
            assert method.lower() in paths[route.path], (route.path, method)
    schemas = spec["components"]["schemas"]
    assert {"Job", "CreateJob", "RetryJob", "Error"} <= set(schemas)
    assert schemas["Job"]["required"] == JOB_KEYS + EXTRA_KEYS
    # What every refusal under /api/ may be, writes' own, and the header every answer carries.
    for path in ("/api/v1/jobs", "/api/v1/jobs/{id}", "/api/v1/jobs/{id}/cancel", "/api/v1/jobs/{id}/events"):
        for method, operation in paths[path].items():
            if method == "parameters":
                continue
            assert {"401", "403", "503"} <= set(operation["responses"]), (path, method)
            if method in ("post", "put"):
                assert {"413", "415"} <= set(operation["responses"]), (path, method)
            for answer in operation["responses"].values():
                assert "X-Content-Type-Options" in answer["headers"], (path, method)
    assert {"101", "401", "403", "426"} <= set(paths["/api/v1/ws"]["get"]["responses"])
    assert "Allow" in spec["components"]["responses"]["MethodNotAllowed"]["headers"]

    # Every $ref resolves.
    def refs(value):
        if isinstance(value, dict):
            if "$ref" in value:
                yield value["$ref"]
            for item in value.values():
                yield from refs(item)
        elif isinstance(value, list):
            for item in value:
                yield from refs(item)

    for ref in refs(spec):
        _, _, kind, name = ref.split("/")
        assert name in spec["components"][kind], ref


# The node out of reach.


async def test_node_not_listening_is_503():
    async with bridge_client(f"127.0.0.1:{free_port()}") as http:
        for response in (
            await http.get("/api/v1/jobs"),
            await http.post("/api/v1/jobs", json=create_body()),
            await http.get(f"/api/v1/jobs/{uuid.uuid4()}"),
            await http.get(f"/api/v1/jobs/{uuid.uuid4()}/events"),
        ):
            check_error(response, 503, "gRPC server is not reachable")


async def test_node_stopping_is_503(settings):
    from server.grpc_server import NodeServer

    node = NodeServer(settings)
    await node.start()
    stopped = False
    try:
        async with bridge_client(f"127.0.0.1:{node.port}") as http:
            assert (await http.get("/api/v1/jobs")).status_code == 200
            await node.stop(grace=0)
            stopped = True
            response = await http.get("/api/v1/jobs")
            assert response.status_code == 503, response.text
            assert response.json()["error"]
    finally:
        if not stopped:
            await node.stop(grace=0)


async def test_unknown_paths_and_methods_answer_json(http):
    check_error(await http.get("/api/v1/nothing-here"), 404, "Not Found")
    job_id = str(uuid.uuid4())
    for method, path, allowed in (
        ("DELETE", "/api/v1/jobs", {"GET", "HEAD", "POST"}),
        ("PATCH", f"/api/v1/jobs/{job_id}", {"GET", "HEAD", "PUT"}),
        ("GET", f"/api/v1/jobs/{job_id}/cancel", {"POST"}),
        ("POST", f"/api/v1/jobs/{job_id}/events", {"GET", "HEAD"}),
        ("OPTIONS", "/api/v1/jobs", {"GET", "HEAD", "POST"}),
    ):
        response = await http.request(method, path)
        check_error(response, 405, "Method Not Allowed")
        assert set(response.headers["allow"].split(", ")) == allowed, (method, path)
