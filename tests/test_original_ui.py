"""The original node's web UI against the bridge, in Chromium: its requests
(tests/js/original_ui.html, the methods, URLs, headers and bodies of
aukilabs/vlm-node ui/src/js/jobManager.js) from a page on its own origin, as
the original UI was served, so every call is cross-origin with a preflight.
List, submit, view and retry must work as they did against the original."""

import contextlib
import functools
import http.server
import threading
from pathlib import Path

from tests.fixtures import DOMAIN_ID, TIMEOUT_MS, running_bridge, wait_for

PAGES = Path(__file__).resolve().parent / "js"
VLM_PROMPT, PROMPT = "Describe the image", "When was the red box on the shelf?"


@contextlib.contextmanager
def serving_pages():
    """tests/js/ over HTTP on 127.0.0.1, a port of its own: the UI's origin."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PAGES))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.asynccontextmanager
async def original_ui(chromium, node):  # noqa: F811
    async with running_bridge(f"127.0.0.1:{node.port}") as bridge:
        # As the original's config.js on a local page: the API on localhost, another port.
        api = bridge.replace("127.0.0.1", "localhost") + "/api/v1"
        with serving_pages() as pages:
            browser = await chromium()
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # (A refused request the browser logs itself, the favicon the page has not: not script errors.)
            page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
                    and errors.append(m.text))
            await page.goto(f"{pages}/original_ui.html?api={api}")
            await page.locator("body[data-ready=true]").wait_for(state="attached")
            try:
                yield page
            finally:
                await context.close()
            assert not errors, errors


async def ui(page, action: str, *args):
    return await page.evaluate(f"(args) => window.ui.{action}(...args)", list(args))


async def finished(page, job_id: str) -> dict:
    async def final():
        job = await ui(page, "view", job_id)
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    return await wait_for(final, timeout=30)


async def test_list_submit_view_and_retry(chromium, node, worker, posemesh, fake_ollama):  # noqa: F811
    async with original_ui(chromium, node) as page:
        assert await ui(page, "list") == []

        # Submit: every field of the dialog, the image ids one a line.
        ids = [item["id"] for item in posemesh.items(DOMAIN_ID)][:3]
        job = await ui(page, "submit", VLM_PROMPT, PROMPT, "\n".join(ids) + "\n", "", DOMAIN_ID)
        assert job["status"] == "pending" and job["job_type"] == "task_timing_v1"
        assert job["ids"].split("\n") == ids and job["domain_id"] == DOMAIN_ID
        assert "Invalid Date" not in job["created"] + job["updated"]

        # The table lists it.
        [row] = await ui(page, "list")
        assert row["id"] == job["id"]

        # View: the result as the original's dialog shows it, pretty JSON.
        done = await finished(page, job["id"])
        assert done["status"] == "completed" and done["error"] is None, done
        assert '"logs": "id,timestamp,event\\n' in done["output"]
        assert '"temporal_output": "' in done["output"]  # a reply in words, as the original's

        # Retry: the dialog sends the job's own domain and ids back with the prompts as edited.
        retried = await ui(page, "retry", job["id"], VLM_PROMPT, "When was it taken away?")
        assert retried["id"] == job["id"] and retried["status"] == "pending" and retried["prompt"] == "When was it taken away?"
        again = await finished(page, job["id"])
        assert again["status"] == "completed", again
        assert [j["id"] for j in await ui(page, "list")] == [job["id"]]


async def test_refusals_reach_the_ui_as_its_error_text(chromium, node, posemesh):  # noqa: F811
    async with original_ui(chromium, node) as page:
        # No data behind the ids: the original answered 400 "No data found".
        missing = "6f1c1a7e-0000-4000-8000-000000000000"
        refused = await page.evaluate(
            "(args) => window.ui.submit(...args).then(() => 'created', (e) => e.message)",
            [VLM_PROMPT, PROMPT, missing, "", DOMAIN_ID],
        )
        assert refused.startswith("Error: 400 - ") and "No data found" in refused, refused
        assert await ui(page, "list") == []
