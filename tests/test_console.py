"""The web console (server/bridge/static/, served at `/` by the bridge) in a
real browser: Debian's chromium driven by Playwright, against the node, the
bridge, a worker and the fake peers, all in the test's event loop. Its
modules of protocol and state (ws_protocol.js, counters.js, camera.js,
job_stream.js) are also tested alone, imported in a blank page on the
bridge's origin (console_modules).

Screenshots of the main pages go to artifacts/console/. Without
/usr/bin/chromium the tests are skipped, except under CI=true, where they fail.
"""

import contextlib
import dataclasses
import json
import posixpath
import re
import uuid
from pathlib import Path

import httpx
import pytest

from devpeers.images import solid_jpeg
from server.auth import Tokens
from server.bridge import websocket
from server.bridge.console import HEADERS, MEDIA_TYPES
from server.grpc_server import NodeServer
from tests.fixtures import DOMAIN_ID, INPUT, TIMEOUT_MS, running_bridge
from vlmnode.v1 import inference_pb2 as pb

try:
    from playwright.async_api import expect
except ImportError:  # the `chromium` fixture says what is missing
    expect = None

# A fake camera that grants itself: for the live view's getUserMedia path.
FAKE_CAMERA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
STATIC = Path(__file__).resolve().parent.parent / "server" / "bridge" / "static"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "console"
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


class Console:
    """A page of the console, and what it did: requests and browser errors."""

    def __init__(self, page, base: str):
        self.page = page
        self.base = base
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", self._console)
        page.set_default_timeout(TIMEOUT_MS)

    def _console(self, message) -> None:
        # A refused request is logged by the browser itself; the page shows it in words.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    async def open(self, hash_path: str = "") -> None:
        await self.page.goto(f"{self.base}/{hash_path}")
        await self.page.locator("main h1").first.wait_for()

    async def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def check_clean(self) -> None:
        """No script errors, no CSP refusals, and nothing fetched from elsewhere."""
        assert not self.errors, self.errors
        foreign = [u for u in self.requests if not u.startswith((self.base, self.base.replace("http", "ws"), "blob:", "data:"))]
        assert not foreign, foreign


@contextlib.asynccontextmanager
async def open_console(chromium, base: str, *extra_args):
    browser = await chromium(*extra_args)
    context = await browser.new_context(viewport=WIDE)
    console = Console(await context.new_page(), base)
    try:
        yield console
    finally:
        await context.close()  # before the bridge stops: it waits for open streams and sockets
    console.check_clean()


@pytest.fixture
async def console(chromium, node):
    async with running_bridge(f"127.0.0.1:{node.port}") as base:
        async with open_console(chromium, base) as c:
            yield c


async def create_job(base: str, **overrides) -> dict:
    body = {"job_type": "task_timing_v1", "query": {"ids": []}, "domain_id": DOMAIN_ID, "input": INPUT}
    body.update(overrides)
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=15) as http:
        response = await http.post("/api/v1/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def status_of(page, job_id: str):
    return page.locator(f'tr[data-job-id="{job_id}"] td[data-label="Status"]')


def write_frames(tmp_path, colours: list[str]) -> list[str]:
    """One JPEG of each colour, as files to pick in the live view."""
    files = []
    for n, colour in enumerate(colours):
        path = tmp_path / f"frame{n}.jpg"
        path.write_bytes(solid_jpeg(colour))
        files.append(str(path))
    return files


UNTIL = f"""const until = (test) => new Promise((resolve, reject) => {{
  const start = Date.now();
  const timer = setInterval(() => {{
    if (test()) resolve();
    else if (Date.now() - start > {TIMEOUT_MS}) reject(new Error(`timed out waiting for ${{test}}`));
    else return;
    clearInterval(timer);
  }}, 20);
}});"""


async def ask_the_live_view(page, frames: list[str]):
    """Picks the frames, asks what colour they are and sends: the first answer, once it is whole."""
    await page.get_by_label("Images from disk").set_input_files(frames)
    await page.get_by_label("Prompt").fill("What colour is it?")
    await page.get_by_role("button", name="Send", exact=True).click()
    answer = page.locator(".live-entry--answer[data-done=true]").first
    await answer.wait_for()
    return answer


@contextlib.asynccontextmanager
async def console_modules(chromium, base: str, *extra_args):
    """A blank page on the bridge's origin, with the console's headers (its
    Content-Security-Policy), where the console's modules are imported as
    the console imports them. Yields run(module, body, arg): `body`, an async
    function's body with the module as `m` and `arg`, evaluated in the page,
    where `await until(test)` waits for test() to hold (TIMEOUT_MS at most)."""
    async with open_console(chromium, base, *extra_args) as console:
        page = console.page
        headers = {**HEADERS, "Content-Type": MEDIA_TYPES[".html"]}
        await page.route(f"{base}/modules", lambda route: route.fulfill(headers=headers, body="<!doctype html><title>modules</title>"))
        await page.goto(f"{base}/modules")

        async def run(module: str, body: str, arg=None):
            return await page.evaluate(f"async (arg) => {{ const m = await import('/console/{module}'); {UNTIL} {body} }}", arg)

        yield run


async def test_submit_a_job_and_follow_it_live_to_its_timeline_then_retry(console, worker, fake_ollama, webhook):
    page = console.page
    fake_ollama.latency = 0.15  # a job of a second or so, so its statuses can be seen changing

    await console.open()
    assert page.url.endswith("#/jobs")
    await page.get_by_text("No jobs yet").wait_for()
    captions = await create_job(console.base, job_type="vlm_only", input={"vlm_prompt": "What colour is it?"})

    # Submit, by keyboard-reachable links and labelled fields.
    await page.get_by_role("link", name="New job").first.click()
    await page.get_by_role("heading", name="New job", level=1).wait_for()
    await page.get_by_label("Task timing").check()
    await page.get_by_label("Domain id").fill(DOMAIN_ID)
    await page.get_by_label("VLM prompt").fill("Describe the image")
    await page.get_by_label("LLM prompt").fill("When was the red box on the shelf?")
    await page.get_by_label("Webhook URL").fill(webhook.url)
    await console.screenshot("submit")
    await page.evaluate("window.__sameDocument = true")
    await page.get_by_role("button", name="Create job").click()

    # The job's page follows it to the end over server-sent events, without a reload.
    await page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    await page.locator(".job-status [data-status=completed]").wait_for()
    assert await page.evaluate("window.__sameDocument") is True
    assert any(f"/api/v1/jobs/{job_id}/events" in url for url in console.requests)
    history = await page.locator(".history [data-kind=status]").evaluate_all("items => items.map(i => i.dataset.status)")
    assert history[-1] == "completed", history
    assert len(history) >= 3 and {"running", "completing", "uploading"} & set(history), history
    assert await page.locator(".history [data-kind=created]").count() == 1
    assert await page.locator(".history [data-kind=updated]").count() == 1

    # The result as a picture: six captioned images on a time axis, start and end marked.
    timeline = page.locator("figure.timeline")
    assert await timeline.locator(".tl-event").count() == 6
    assert await timeline.locator(".tl-dot").count() == 6
    assert await timeline.locator(".tl-flag--start").inner_text() == "Start"
    assert await timeline.locator(".tl-flag--end").inner_text() == "End"
    start = timeline.locator(".tl-event[data-mark=start]")
    end = timeline.locator(".tl-event[data-mark=end]")
    assert "photo_req_1_" in await start.inner_text() and "START" in (await start.inner_text()).upper()
    assert "photo_req_4_" in await end.inner_text()
    assert "mostly red" in await start.inner_text()
    assert await timeline.locator(".tl-event[data-mark=during]").count() == 2
    assert "3 min" in await timeline.locator(".moment--length").inner_text()
    await page.locator("dl.reasoning").get_by_text("the task spans events mentioning red").wait_for()
    assert await page.get_by_role("img", name=re.compile("Timeline: 6 captioned images")).count() == 1
    # The raw JSON is one click away.
    raw = page.locator("details.raw pre")
    assert not await raw.is_visible()
    await page.get_by_text("Raw JSON").click()
    assert '"image_id"' in await raw.inner_text() and job_id in await raw.inner_text()

    # The API's rules: a completed job can be retried, not cancelled.
    retry = page.get_by_role("button", name="Retry…")
    cancel = page.get_by_role("button", name="Cancel job")
    assert await retry.is_enabled() and await cancel.is_disabled()
    await page.get_by_text("Raw JSON").click()
    await console.screenshot("job")
    await page.set_viewport_size(NARROW)
    await console.screenshot("job-narrow")
    await page.set_viewport_size(WIDE)
    await page.emulate_media(color_scheme="dark")
    await console.screenshot("job-dark")
    await page.emulate_media(color_scheme="light")

    # Retry with an edited LLM prompt: blue is one photo, so the task starts and ends there.
    await retry.click()
    await page.get_by_label("LLM prompt").fill("When was the blue box on the shelf?")
    await page.get_by_role("button", name="Retry job").click()
    await page.get_by_text("Retried: the job is queued again.").wait_for()
    await page.locator(".history [data-kind=retry]").wait_for()
    await page.locator(".job-status [data-status=completed]").wait_for()
    await page.locator(".tl-flag--both").wait_for()
    both = timeline.locator(".tl-event[data-mark=start-end]")
    assert "photo_req_3_" in await both.inner_text() and "mostly blue" in await both.inner_text()
    assert "When was the blue box" in await page.locator("section", has=page.get_by_role("heading", name="Input")).inner_text()
    assert await page.evaluate("window.__sameDocument") is True

    # Back on the list, both jobs are there, completed.
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await status_of(page, job_id).get_by_text("Completed").wait_for()
    await status_of(page, captions["id"]).get_by_text("Completed").wait_for()
    await console.screenshot("jobs")

    # A vlm_only job's result: its captions, as a list.
    await page.get_by_role("link", name=f"Job {captions['id']}").click()
    responses = page.get_by_role("list", name="Captions").get_by_role("listitem")
    await expect(responses).to_have_count(6)
    assert "mostly red" in await responses.nth(1).inner_text()
    assert await page.locator("figure.timeline").count() == 0
    await console.screenshot("job-captions")


async def test_the_list_follows_jobs_live_filters_and_cancels(console):
    page = console.page
    timing = await create_job(console.base)
    captions = await create_job(console.base, job_type="vlm_only", input={"vlm_prompt": "What colour?"})

    await console.open("#/jobs")
    for job in (timing, captions):
        await status_of(page, job["id"]).get_by_text("Pending").wait_for()
    await page.get_by_text("Live: following 2 unfinished jobs").wait_for()
    # Each unfinished job in view has its own event stream.
    for job in (timing, captions):
        assert any(f"/api/v1/jobs/{job['id']}/events" in url for url in console.requests)

    # Cancelled elsewhere: the row changes without a reload, from its event stream.
    await page.evaluate("window.__sameDocument = true")
    async with httpx.AsyncClient(base_url=console.base, trust_env=False) as http:
        assert (await http.post(f"/api/v1/jobs/{captions['id']}/cancel")).status_code == 200
    await status_of(page, captions["id"]).get_by_text("Cancelled").wait_for(timeout=3000)
    assert await page.evaluate("window.__sameDocument") is True

    # Filters: by job type, by status, and both at once.
    rows = page.locator("tbody tr")
    await page.get_by_label("Job type").select_option("vlm_only")
    # Waited for, not read once: a row count of the filter before can hold while the next one loads.
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-job-id", captions["id"])
    assert "type=vlm_only" in page.url
    await page.get_by_label("Job type").select_option("")
    await page.get_by_label("Status").select_option("pending")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-job-id", timing["id"])
    await page.get_by_label("Job type").select_option("vlm_only")
    await page.get_by_text("No jobs match these filters.").wait_for()
    await page.get_by_label("Status").select_option("")
    await page.get_by_label("Job type").select_option("")
    await expect(rows).to_have_count(2)
    # Paged, newest first.
    await console.open("#/jobs?size=1")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-job-id", captions["id"])
    assert await page.get_by_role("button", name="Newer").is_disabled()
    await page.get_by_role("button", name="Older").click()
    await page.locator(f'tbody tr[data-job-id="{timing["id"]}"]').wait_for()
    await page.get_by_text("Page 2 · jobs 2–2").wait_for()
    assert await page.get_by_role("button", name="Older").is_disabled()
    assert "page=2" in page.url
    await page.get_by_role("button", name="Newer").click()
    await page.locator(f'tbody tr[data-job-id="{captions["id"]}"]').wait_for()

    # A pending job can be cancelled, not retried.
    await console.open("#/jobs")
    await page.get_by_role("link", name=f"Job {timing['id']}").click()
    await page.locator(".job-status [data-status=pending]").wait_for()
    retry = page.get_by_role("button", name="Retry…")
    cancel = page.get_by_role("button", name="Cancel job")
    assert await retry.is_disabled() and await cancel.is_enabled()
    await page.get_by_text("The result appears here when the job completes.").wait_for()
    await console.screenshot("job-pending")
    await cancel.click()
    await page.get_by_text("The job was cancelled.").wait_for()
    await page.locator(".job-status [data-status=cancelled]").wait_for()
    assert await retry.is_enabled() and await cancel.is_disabled()

    await page.go_back()
    await status_of(page, timing["id"]).get_by_text("Cancelled").wait_for()
    await page.set_viewport_size(NARROW)
    await console.screenshot("jobs-narrow")


async def test_a_refused_submit_says_why(console):
    page = console.page
    await console.open("#/submit")
    # The keyboard: a skip link first, then the navigation; the form is labelled.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()
    assert page.url.endswith("#/submit")
    await page.get_by_label("Captions only").check()
    assert not await page.get_by_label("LLM prompt").is_visible()
    await page.get_by_label("Domain id").fill(DOMAIN_ID)
    await page.get_by_label("Image ids").fill(str(uuid.uuid4()))
    await page.get_by_role("button", name="Create job").click()
    alert = page.get_by_role("alert")
    await alert.get_by_text("No data found").wait_for()
    assert "refused" in await alert.inner_text()
    assert page.url.endswith("#/submit")
    await console.screenshot("submit-refused")

    await page.get_by_label("Domain id").fill("not-a-domain")
    await page.get_by_role("button", name="Create job").click()
    await page.get_by_role("alert").get_by_text("domain_id must be a UUID").wait_for()


async def test_the_bridge_serves_the_console_itself():
    """Works without a browser: the page, its modules and styles come from the
    Python package, nothing names a URL elsewhere, and the API still wins."""
    async with running_bridge("127.0.0.1:9") as base:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as http:
            index = await http.get("/")
            assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in index.headers["content-security-policy"]
            # The page under its other name, and every file, carry the same headers.
            for path in ("/console/index.html", "/console/app.js", "/console/style.css"):
                response = await http.get(path)
                for name in ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy"):
                    assert response.headers[name] == index.headers[name], (path, name)
                assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
            # Module scripts from this origin, and only as what they are: nosniff
            # has the browser refuse a module that does not come as JavaScript.
            assert "script-src 'self'" in index.headers["content-security-policy"].split("; ")
            assert index.headers["x-content-type-options"] == "nosniff"
            for file in STATIC.iterdir():
                response = await http.get(f"/console/{file.name}")
                assert response.headers["content-type"] == MEDIA_TYPES[file.suffix], file.name
                assert response.headers["x-content-type-options"] == "nosniff", file.name
            todo = re.findall(r'(?:src|href)="(/console/[^"]+)"', index.text)
            seen = set()
            while todo:
                path = todo.pop()
                if path in seen:
                    continue
                seen.add(path)
                response = await http.get(path)
                assert response.status_code == 200, path
                if path.endswith(".js"):
                    assert "javascript" in response.headers["content-type"], path
                    for spec in re.findall(r'^(?:import|export)\b[^;]*?\bfrom\s*"([^"]+)";', response.text, re.M):
                        assert spec.startswith("./"), (path, spec)
                        todo.append(posixpath.normpath(posixpath.join(posixpath.dirname(path), spec)))
            assert {"/console/app.js", "/console/style.css", "/console/live.js", "/console/timeline.js"} <= seen
            # Every module is one the page imports.
            assert {f"/console/{file.name}" for file in STATIC.glob("*.js")} <= seen
            missing = await http.get("/console/nothing.js")
            assert missing.status_code == 404 and "error" in missing.json()
            assert (await http.get("/api/v1/nothing-here")).json() == {"error": "Not Found"}
    outside = re.compile(r"""(?:src|href)=["']https?:|url\(\s*["']?(?:https?:)?//|@import|(?:from|import\()\s*["']https?:""")
    for file in STATIC.iterdir():
        assert not outside.search(file.read_text()), file.name


async def test_the_live_view_streams_answers(chromium, settings, fake_ollama, tmp_path):
    settings = dataclasses.replace(settings, image_batch_size=2)
    node = NodeServer(settings)
    await node.start()
    try:
        async with running_bridge(f"127.0.0.1:{node.port}", settings) as base:
            async with open_console(chromium, base, *FAKE_CAMERA_ARGS) as console:
                await drive_the_live_view(console, tmp_path)
    finally:
        await node.stop(grace=0.5)


async def drive_the_live_view(console, tmp_path):
    page = console.page
    await console.open("#/live")
    answer = await ask_the_live_view(page, write_frames(tmp_path, ["red", "red"]))
    # The default VLM (moondream) sees one image: the two frames reach it as one contact sheet.
    assert "a 128x48 image, mostly red" in await answer.inner_text()
    assert await answer.get_attribute("data-frames") == "1,2"
    assert "Answered frames #1–#2 · 0 dropped so far" in await answer.inner_text()
    assert await answer.locator("img").count() == 2
    assert await page.get_by_text("2 sent · 2 answered · 0 dropped").count() == 1
    await page.get_by_text("Connected").first.wait_for()

    # The camera (a fake one here): frames captured to JPEG through a canvas.
    await page.get_by_role("button", name="Start camera").click()
    await page.get_by_role("button", name="Send a frame").click()
    await page.get_by_role("button", name="Send a frame").click()
    camera_answer = page.locator(".live-entry--answer[data-done=true]").nth(1)
    await camera_answer.wait_for()
    assert await camera_answer.get_attribute("data-frames") == "3,4"
    assert re.search(r"a \d+x\d+ image, mostly \w+", await camera_answer.inner_text())
    await console.screenshot("live")
    await page.get_by_role("button", name="Stop camera").click()

    # A new connection without a prompt: the node's notice, in words.
    await page.get_by_role("button", name="Disconnect").click()
    await page.get_by_text("Not connected").wait_for()
    await page.get_by_label("Prompt").fill("")
    await page.get_by_role("button", name="Send", exact=True).click()
    await page.locator(".live-entry--notice").get_by_text("No prompt received for image batch").wait_for()

    # A refusal: {"error"} is shown, and the connection is closed.
    await page.get_by_role("button", name="Disconnect").click()
    await page.get_by_text("Options").click()
    await page.get_by_label("Answer length limit").fill("99999")
    await page.get_by_role("button", name="Connect", exact=True).click()
    await page.locator(".live-entry--error").get_by_text("num_predict must be an integer").wait_for()
    await page.get_by_text("Closed: num_predict must be").wait_for()


async def test_a_node_that_wants_a_token(chromium, settings, tmp_path):
    """With AUTH_TOKENS on the node and the bridge, the console says it needs a
    token, takes one in its header, and then lists jobs (REST with
    `Authorization: Bearer`), follows them (EventSource with `access_token=`)
    and streams answers (the WebSocket subprotocol `bearer.<token>`)."""
    settings = dataclasses.replace(settings, auth_tokens="t0k", image_batch_size=2)
    node = NodeServer(settings)
    await node.start()
    try:
        async with running_bridge(f"127.0.0.1:{node.port}", settings, tokens=Tokens(["t0k"])) as base:
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=15, headers={"Authorization": "Bearer t0k"}) as http:
                body = {"job_type": "vlm_only", "query": {"ids": []}, "domain_id": DOMAIN_ID, "input": {"vlm_prompt": "What colour?"}}
                created = await http.post("/api/v1/jobs", json=body)
                assert created.status_code == 200, created.text
                job = created.json()
                async with open_console(chromium, base) as console:
                    page = console.page
                    sockets = []
                    page.on("websocket", lambda ws: sockets.append(ws.url))
                    await console.open("#/jobs")

                    # Refused: the page says why, and the token field has the focus.
                    await page.locator(".error-slot").get_by_text("This node needs an access token").wait_for()
                    panel = page.locator("#access-panel")
                    await panel.get_by_role("alert").get_by_text("This node needs an access token").wait_for()
                    field = page.get_by_label("Token", exact=True)
                    await expect(field).to_be_focused()
                    assert await field.get_attribute("type") == "password"
                    await expect(page.get_by_role("button", name="Access token")).to_have_attribute("aria-expanded", "true")
                    await console.screenshot("access-token")

                    # With the token the jobs list loads, and is followed live.
                    await field.fill("t0k")
                    await page.get_by_role("button", name="Save token").click()
                    await status_of(page, job["id"]).get_by_text("Pending").wait_for()
                    assert await page.get_by_text("This node needs an access token").count() == 0
                    assert not await panel.is_visible()
                    assert await page.evaluate("localStorage.getItem('vlmnode.accessToken')") == "t0k"
                    await page.get_by_text("Live: following 1 unfinished job").wait_for()
                    assert (await http.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code == 200
                    await status_of(page, job["id"]).get_by_text("Cancelled").wait_for(timeout=3000)
                    events = [u for u in console.requests if f"/api/v1/jobs/{job['id']}/events" in u]
                    assert events and all("access_token=t0k" in u for u in events), events

                    # The live view streams an answer over the WebSocket.
                    await page.get_by_role("link", name="Live view").click()
                    await page.get_by_role("heading", name="Live view", level=1).wait_for()
                    answer = await ask_the_live_view(page, write_frames(tmp_path, ["blue", "blue"]))
                    assert "mostly blue" in await answer.inner_text()
                    assert sockets and not any("access_token" in u for u in sockets), "the token rides as a subprotocol"

                    # Cleared: refused again, and the control says so.
                    await page.get_by_role("link", name="Jobs", exact=True).click()
                    await status_of(page, job["id"]).wait_for()
                    await page.get_by_role("button", name="Access token").click()
                    await page.get_by_role("button", name="Clear token").click()
                    await page.locator(".error-slot").get_by_text("This node needs an access token").wait_for()
                    assert await page.evaluate("localStorage.getItem('vlmnode.accessToken')") is None
                    await expect(page.get_by_role("button", name="Access token")).to_have_attribute("data-state", "needed")
    finally:
        await node.stop(grace=0.5)


def answer_chunk(**fields) -> pb.AnswerChunk:
    chunk = pb.AnswerChunk(model="moondream", **fields)
    chunk.created_at.FromJsonString("2026-12-02T10:00:00Z")
    return chunk


async def test_the_websocket_protocol_module(chromium):
    """ws_protocol.js reads each kind of message the bridge sends, as the
    bridge writes it (server/bridge/websocket.py), and what is not one."""
    last = answer_chunk(
        answer_id=1, done=True, frame_ids=["1", "2"], frames_dropped=3, done_reason="stop",
        metrics=pb.AnswerMetrics(prompt_eval_count=5),
    )
    first = answer_chunk(answer_id=1, text="A red box.")
    text = [
        json.dumps(websocket.text_object(first)),
        json.dumps(websocket.text_object(last)),
        websocket.error_message("not an image", closing=False),
        websocket.error_message("the model is unavailable"),
        "No prompt received for image batch",
        "not json {",
        "[1, 2]",
        "null",
        '{"error": 3}',
        '{"response": 5, "frames": "12", "done": 1}',
        '{"response": "x", "frames": ["1", "", "two", "0", "3"]}',
    ]
    binary = [
        list(json.dumps(websocket.ollama_object(last)).encode()),
        list(json.dumps(websocket.ollama_object(first)).encode()),
        list(b'{"x": 1}'),
        [0xFF, 0xFE, 0x00],
    ]
    async with running_bridge("127.0.0.1:9") as base:
        async with console_modules(chromium, base) as run:
            read = await run(
                "ws_protocol.js",
                "return [...arg.text.map(m.readMessage), ...arg.binary.map((b) => m.readMessage(new Uint8Array(b).buffer))];",
                {"text": text, "binary": binary},
            )
            done = {"kind": "answer", "text": "", "done": True, "frames": [1, 2], "framesDropped": 3}
            streaming = {"kind": "answer", "text": "A red box.", "done": False, "frames": [], "framesDropped": None}
            assert read[:11] == [
                {**streaming, "model": None, "createdAt": None, "doneReason": None},
                {**done, "model": None, "createdAt": None, "doneReason": None},
                {"kind": "error", "message": "not an image", "closing": False},
                {"kind": "error", "message": "the model is unavailable", "closing": True},
                {"kind": "notice", "text": "No prompt received for image batch"},
                {"kind": "notice", "text": "not json {"},
                {"kind": "notice", "text": "[1, 2]"},
                {"kind": "notice", "text": "null"},
                {"kind": "notice", "text": '{"error": 3}'},
                {"kind": "answer", "text": "", "done": False, "frames": [], "framesDropped": None,
                 "model": None, "createdAt": None, "doneReason": None},
                {"kind": "answer", "text": "x", "done": False, "frames": [1, 3], "framesDropped": None,
                 "model": None, "createdAt": None, "doneReason": None},
            ]
            ollama = {"model": "moondream", "createdAt": "2026-12-02T10:00:00Z"}
            assert read[11:] == [
                {**done, **ollama, "doneReason": "stop"},
                {**streaming, **ollama, "doneReason": None},
                {"kind": "unreadable"},
                {"kind": "unreadable"},
            ]

            # What the client sends, and where.
            sent = await run(
                "ws_protocol.js",
                """return {
                  urls: [m.realtimeUrl(0, "https://node.example/#/live"), m.realtimeUrl(12, "http://127.0.0.1:8080/x?y=1#z")],
                  prompts: [m.promptToSend("  hi ", null), m.promptToSend("hi", "hi"), m.promptToSend(" ", null), m.promptToSend(undefined, null)],
                  reasons: [
                    m.closeReason({ code: 1000, reason: "" }), m.closeReason({ code: 1005, reason: "" }),
                    m.closeReason({ code: 1006, reason: "" }), m.closeReason({ code: 1008, reason: "too long" }),
                    m.closeReason({ code: 1008, reason: "cut" }, "the whole refusal"),
                  ],
                  subprotocol: m.SUBPROTOCOL,
                  maxNumPredict: m.MAX_NUM_PREDICT,
                };""",
            )
            assert sent["urls"] == [
                "wss://node.example/api/v1/ws?format=text",
                "ws://127.0.0.1:8080/api/v1/ws?format=text&num_predict=12",
            ]
            assert [r.path for r in websocket.routes] == ["/api/v1/ws", "/api/v1/ws"]
            assert "text" in websocket.FORMATS
            assert sent["prompts"] == ["hi", None, None, None]
            assert sent["reasons"] == ["", "", "code 1006", "too long", "the whole refusal"]
            # The bridge's own facts, not copies that could drift.
            assert sent["subprotocol"] == websocket.SUBPROTOCOL
            assert sent["maxNumPredict"] == websocket.MAX_NUM_PREDICT


async def test_the_live_tally_module(chromium):
    """counters.js: frames numbered from 1, an answer built from its chunks,
    the frames answered added up, the dropped ones as the node last counted."""
    async with running_bridge("127.0.0.1:9") as base:
        async with console_modules(chromium, base) as run:
            tally = await run(
                "counters.js",
                """const t = new m.LiveTally();
                const numbers = [t.frameSent(), t.frameSent(), t.frameSent()];
                const before = t.summary();
                const a = t.answerChunk({ text: "A red ", done: false, frames: [], framesDropped: null });
                const streaming = { ...a };
                const same = t.answerChunk({ text: "box.", done: true, frames: [1, 2], framesDropped: 1 }) === a;
                const cut = t.answerChunk({ text: "Half", done: false, frames: [], framesDropped: null });
                t.cutOff();
                const b = t.answerChunk({ text: "Blue.", done: true, frames: [3], framesDropped: null });
                return {
                  numbers, before, streaming, same, a, cut: cut.number, b, fresh: b !== cut,
                  counts: [t.sent, t.answered, t.dropped, t.answers], summary: t.summary(),
                  lists: [[], [5], [2, 4], [3, 1, 2, 7], [9, 8, 10, 1]].map(m.frameList),
                };""",
            )
    assert tally["numbers"] == [1, 2, 3]
    assert tally["before"] == "3 sent · 0 answered · 0 dropped"
    assert tally["streaming"] == {"number": 1, "text": "A red ", "done": False, "frames": []}
    assert tally["same"] is True
    assert tally["a"] == {"number": 1, "text": "A red box.", "done": True, "frames": [1, 2]}
    # Cut off: the next chunk starts the next answer.
    assert tally["cut"] == 2 and tally["fresh"] is True
    assert tally["b"] == {"number": 3, "text": "Blue.", "done": True, "frames": [3]}
    # A last chunk without frames_dropped keeps the count the node gave before.
    assert tally["counts"] == [3, 3, 1, 3]
    assert tally["summary"] == "3 sent · 3 answered · 1 dropped"
    assert tally["lists"] == ["none", "#5", "#2, #4", "#1–#3, #7", "#1, #8–#10"]


async def test_the_camera_module(chromium):
    """camera.js with Chromium's fake camera: opened, a frame captured as
    JPEG at the camera's size, closed; and frames paced one at a time."""
    async with running_bridge("127.0.0.1:9") as base:
        async with console_modules(chromium, base, *FAKE_CAMERA_ARGS) as run:
            camera = await run(
                "camera.js",
                """const video = document.createElement("video");
                video.muted = true;
                document.body.append(video);
                const noPicture = await m.captureJpeg(video);
                const stream = await m.openCamera();
                await m.playCamera(video, stream);
                const blob = await m.captureJpeg(video);
                const picture = await createImageBitmap(blob);
                const size = [video.videoWidth, video.videoHeight];
                const tracks = stream.getTracks();
                m.closeCamera(stream, video);
                const stopped = new AbortController();
                stopped.abort();
                const late = await m.openCamera(stopped.signal);
                return {
                  supported: m.cameraSupported(), noPicture, type: blob.type,
                  picture: [picture.width, picture.height], video: size,
                  tracks: tracks.map((track) => track.readyState), detached: video.srcObject === null, late,
                };""",
            )
            assert camera["supported"] is True
            assert camera["noPicture"] is None
            assert camera["type"] == "image/jpeg"
            width, height = camera["picture"]
            assert 0 < max(width, height) <= 1280 and camera["picture"] == camera["video"], camera
            assert camera["tracks"] == ["ended"] and camera["detached"] is True
            assert camera["late"] is None

            paced = await run(
                "camera.js",
                """const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
                let running = 0, most = 0, ticks = 0;
                const stop = m.pace(async () => {
                  ticks += 1;
                  running += 1;
                  most = Math.max(most, running);
                  await sleep(30);
                  running -= 1;
                }, () => 5);
                await sleep(300);
                stop();
                const atStop = ticks;
                await sleep(150);
                return { atStop, after: ticks, most };""",
            )
            assert paced["atStop"] >= 2, paced
            assert paced["after"] == paced["atStop"], "no frame after stop"
            assert paced["most"] == 1, "a slow send never overlaps the next"


async def test_the_job_stream_module(chromium, node):
    """job_stream.js follows a job to its end over the bridge's event stream,
    reads each event's data, and says when the bridge refuses the stream."""
    async with running_bridge(f"127.0.0.1:{node.port}") as base:
        job = await create_job(base)
        async with console_modules(chromium, base) as run:
            read = await run(
                "job_stream.js",
                """return {
                  jobs: ['{"id": "j", "status": "running"}', "nope", "null", "[]", '{"status": 3}'].map(m.readJobEvent),
                  errors: ['{"error": "database unavailable"}', "plain words", "null", '{"error": ""}'].map(m.readErrorEvent),
                };""",
            )
            assert read["jobs"] == [{"id": "j", "status": "running"}, None, None, None, None]
            assert read["errors"] == ["database unavailable", "plain words", "null", '{"error": ""}']

            await run(
                "job_stream.js",
                """window.seen = [];
                window.states = [];
                m.watchJob(arg, { onJob: (job) => seen.push(job.status), onState: (state, message) => states.push([state, message ?? null]) });""",
                job["id"],
            )
            await run("job_stream.js", "await until(() => states.length && seen.length);")
            async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
                assert (await http.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code == 200
            followed = await run(
                "job_stream.js",
                """await until(() => states.some(([state]) => state === "closed"));
                return { seen, states };""",
            )
            assert followed == {"seen": ["pending", "cancelled"], "states": [["live", None], ["closed", None]]}

            refused = await run(
                "job_stream.js",
                """const states = [];
                m.watchJob(arg, { onJob: () => states.push(["job", null]), onState: (state, message) => states.push([state, message ?? null]) });
                await until(() => states.length);
                return states;""",
                str(uuid.uuid4()),
            )
            assert refused == [["error", "live updates stopped: the bridge refused the event stream"]]


async def test_the_statuses_module_names_the_nodes_statuses(chromium):
    """statuses.js holds the page's copy of the statuses and job types (a
    page cannot import Python): it must say what server/job_status.py and
    server/jobs.py say, the final and held ones included."""
    from server.job_status import FINAL, HELD, Status
    from server.jobs import JOB_TYPES

    async with running_bridge("127.0.0.1:9") as base:
        async with console_modules(chromium, base) as run:
            page = await run(
                "statuses.js",
                "return { statuses: m.STATUSES, types: m.JOB_TYPES, final: [...m.FINAL], active: [...m.ACTIVE] };",
            )
    assert page["statuses"] == [str(status) for status in Status]
    assert page["types"] == list(JOB_TYPES)
    assert set(page["final"]) == {str(status) for status in FINAL}
    assert set(page["active"]) == {str(status) for status in HELD}
