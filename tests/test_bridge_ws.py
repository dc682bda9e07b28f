"""The WebSocket `/api/v1/ws` of the original node, through the bridge and
the Infer RPC, driven by real clients: the `websockets` library written as
the original's callers were, and the original README's JavaScript client
under Node."""

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
from datetime import datetime

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from devpeers.images import solid_jpeg
from devpeers.ports import free_port
from server.grpc_server import NodeServer
from server.realtime import RealtimeLimits
from tests.fixtures import TYPESCRIPT_CLIENT, run_in_typescript_client, running_bridge, wait_for

NO_PROMPT = "No prompt received for image batch"
MAX_BAD_FRAMES = RealtimeLimits.max_bad_frames
# Ollama's /api/generate stream objects, in its order (api/types.go GenerateResponse, Metrics), then ours.
OLLAMA_FIELDS = ["model", "created_at", "response", "done"]
LAST_FIELDS = ["done_reason", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
               "eval_count", "eval_duration", "frames", "frames_dropped"]


@pytest.fixture
async def ws_url(settings):
    """A node answering batches of 2 images, and its bridge's WebSocket URL. Its VLM sees
    several images, so an answer names each (moondream's contact sheet: test_inference)."""
    settings = dataclasses.replace(
        settings, image_batch_size=2, realtime_max_frame_bytes=200_000, vlm_model="gemma3:4b"
    )
    node = NodeServer(settings)
    await node.start()
    async with running_bridge(f"127.0.0.1:{node.port}", settings) as base:
        yield base.replace("http://", "ws://") + "/api/v1/ws"
    await node.stop(grace=0.5)


def ollama_object(message) -> dict:
    """A binary answer read as the original's Rust callers read it (serde:
    model, created_at, response and done required, with their types), its
    fields in Ollama's order and no others."""
    assert isinstance(message, bytes), f"an answer in a text message: {message!r}"
    body = json.loads(message)
    assert isinstance(body["model"], str) and isinstance(body["response"], str) and isinstance(body["done"], bool)
    datetime.fromisoformat(body["created_at"])  # RFC 3339
    names = OLLAMA_FIELDS + (LAST_FIELDS if body["done"] else [])
    assert list(body) == [name for name in names if name in body], body
    assert set(OLLAMA_FIELDS) <= set(body) and (not body["done"] or {"frames", "frames_dropped"} <= set(body)), body
    return body


async def answer(ws) -> tuple[str, dict]:
    """Reads binary answers until one is done (a text message here fails);
    returns the text and the last."""
    text = ""
    while True:
        message = ollama_object(await asyncio.wait_for(ws.recv(), 10))
        text += message["response"]
        if message["done"]:
            return text, message


async def text(ws) -> str:
    message = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(message, str), message
    return message


async def closed_with(ws) -> tuple[int, list]:
    """What comes until the close, and the close code."""
    received = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            received.append(await asyncio.wait_for(ws.recv(), 10))
    return closed.value.rcvd.code, received


async def test_answers_are_binary_ollama_objects(ws_url, fake_ollama):
    fake_ollama.token_delay = 0.01  # a token at a time, so the answer comes in several messages
    async with websockets.connect(ws_url) as ws:
        await ws.send("What colour is it?")
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("blue"))
        messages = [ollama_object(await ws.recv())]
        while not messages[-1]["done"]:
            messages.append(ollama_object(await ws.recv()))
        assert await ws.ping()  # answers pings
    assert len(messages) > 2 and all(list(m) == OLLAMA_FIELDS for m in messages[:-1])
    assert {m["model"] for m in messages} == {"gemma3:4b"}
    text = "".join(m["response"] for m in messages)
    assert text == "a 64x48 image, mostly red; a 64x48 image, mostly blue"
    last = messages[-1]
    assert last["done_reason"] == "stop" and last["eval_count"] == len(text.split())
    assert last["prompt_eval_count"] > 0 and last["total_duration"] >= last["eval_duration"] > 0
    assert last["frames"] == ["1", "2"] and last["frames_dropped"] == 0
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["prompt"] == "What colour is it?" and request["images"] == 2


async def test_format_text_sends_text_messages(ws_url):
    async with websockets.connect(ws_url + "?format=text") as ws:
        await ws.send("What colour is it?")
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("blue"))
        messages = [json.loads(await text(ws))]
        while not messages[-1]["done"]:
            messages.append(json.loads(await text(ws)))
    assert all(list(m) == ["response", "done"] for m in messages[:-1])
    assert list(messages[-1]) == ["response", "done", "frames", "frames_dropped"]
    assert "".join(m["response"] for m in messages) == "a 64x48 image, mostly red; a 64x48 image, mostly blue"
    assert messages[-1]["frames"] == ["1", "2"] and messages[-1]["frames_dropped"] == 0


async def test_a_caller_as_the_original_had_them(ws_url):
    """Frames first, then the prompt; binary JSON objects read until one is done."""
    async with websockets.connect(ws_url) as ws:
        await ws.send(solid_jpeg("green"))
        await ws.send("What colour is it?")
        text, last = await answer(ws)
    assert text == "a 64x48 image, mostly green" and last["frames"] == ["1"]


async def test_a_client_that_reads_only_binary_messages(ws_url):
    """Notices are text: a client that skips text still gets every answer whole."""
    answers = []
    async with websockets.connect(ws_url) as ws:
        for colour in ("red", "green", "blue"):
            await ws.send(solid_jpeg(colour))  # before any prompt: notices
        await ws.send(b"not an image")  # refused: an error in text
        await ws.send("What colour is it?")
        reply = ""
        while len(answers) < 1:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str):
                continue
            body = json.loads(message)
            reply += body["response"]
            if body["done"]:
                answers.append((reply, body["frames"]))
    assert answers == [("a 64x48 image, mostly green; a 64x48 image, mostly blue", ["2", "3"])]


async def test_frames_before_a_prompt_are_answered_when_it_comes(ws_url, fake_ollama):
    async with websockets.connect(ws_url) as ws:
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("green"))
        assert await text(ws) == NO_PROMPT  # the batch of 2 is full
        await ws.send(solid_jpeg("blue"))  # past it: the oldest goes, the newest batch is kept
        assert await text(ws) == NO_PROMPT
        await ws.send("And these?")
        text_, last = await answer(ws)
        assert text_ == "a 64x48 image, mostly green; a 64x48 image, mostly blue"
        assert last["frames"] == ["2", "3"] and last["frames_dropped"] == 1
        # The prompt holds for what follows.
        await ws.send(solid_jpeg("white"))
        await ws.send(solid_jpeg("yellow"))
        text_, last = await answer(ws)
        assert "white" in text_ and "yellow" in text_ and last["frames"] == ["4", "5"]
    assert [r["prompt"] for r in fake_ollama.requests if r["images"]] == ["And these?", "And these?"]


async def test_a_new_prompt_flushes_queued_images(ws_url):
    async with websockets.connect(ws_url) as ws:
        await ws.send("First question")
        await ws.send(solid_jpeg("yellow"))
        await ws.send("Second question")
        text, last = await answer(ws)
        assert text == "a 64x48 image, mostly yellow" and last["frames"] == ["1"]


async def test_a_quiet_spell_flushes_queued_images(settings, fake_ollama):
    settings = dataclasses.replace(settings, realtime_flush_after=0.3)
    node = NodeServer(settings)
    await node.start()
    async with running_bridge(f"127.0.0.1:{node.port}", settings) as base:
        async with websockets.connect(base.replace("http", "ws") + "/api/v1/ws") as ws:
            await ws.send("What colour?")
            await ws.send(solid_jpeg("green"))
            text, _ = await answer(ws)
            assert "green" in text
    await node.stop(grace=0.5)


async def test_num_predict_limits_the_answer(ws_url, fake_ollama):
    async with websockets.connect(ws_url + "?num_predict=3") as ws:
        await ws.send("Describe")
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("red"))
        text, last = await answer(ws)
        assert len(text.split()) == 3 and last["done_reason"] == "length" and last["eval_count"] == 3
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["options"]["num_predict"] == 3


@pytest.mark.parametrize(("query", "error"), [
    ("num_predict=abc", "num_predict must be an integer between 0 and 8192, got 'abc'"),
    ("num_predict=-1", "num_predict must be an integer between 0 and 8192, got '-1'"),
    ("num_predict=99999999", "num_predict must be an integer between 0 and 8192, got '99999999'"),
    ("format=xml", "format must be binary or text, got 'xml'"),
    ("format=", "format must be binary or text, got ''"),
])
async def test_bad_query_parameters_are_refused(ws_url, query, error):
    async with websockets.connect(f"{ws_url}?{query}") as ws:
        code, received = await closed_with(ws)
    assert code == 1008 and received == [json.dumps({"error": error, "done": True})]


async def test_a_bad_frame_is_refused_and_the_stream_goes_on(ws_url, fake_ollama):
    async with websockets.connect(ws_url) as ws:
        await ws.send("Describe")
        await ws.send(b"definitely not a jpeg")
        assert json.loads(await text(ws)) == {"error": "frame 1: not an image", "done": False}
        await ws.send(b"\xff\xd8\xff" + bytes(250_000))  # over the frame limit, within a WebSocket message
        assert json.loads(await text(ws)) == {
            "error": "frame 2: 250003 bytes, over the limit of 200000", "done": False
        }
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("blue"))
        text_, last = await answer(ws)
        assert text_ == "a 64x48 image, mostly red; a 64x48 image, mostly blue" and last["frames"] == ["3", "4"]
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["images"] == 2


async def test_a_client_that_keeps_sending_bad_frames_is_closed(ws_url, fake_ollama):
    async with websockets.connect(ws_url) as ws:
        await ws.send("Describe")
        # A good frame between them starts the count again.
        for _n in range(1, MAX_BAD_FRAMES):
            await ws.send(b"junk")
        await ws.send(solid_jpeg("red"))
        for _n in range(MAX_BAD_FRAMES):
            await ws.send(b"junk")
        code, received = await closed_with(ws)
    refused = [json.loads(m) for m in received if isinstance(m, str)]
    last = MAX_BAD_FRAMES * 2
    assert refused == [{"error": f"frame {n}: not an image", "done": False}
                       for n in [*range(1, MAX_BAD_FRAMES), *range(MAX_BAD_FRAMES + 1, last)]] + [
        {"error": f"frame {last}: not an image ({MAX_BAD_FRAMES} bad frames in a row end the stream)", "done": True}
    ]
    assert code == 1008
    assert not [r for r in fake_ollama.requests if r["images"]]  # the red frame waited for its batch


@pytest.mark.parametrize("fragments", [1, 3])
async def test_a_message_over_the_websocket_limit_is_refused_before_the_close(ws_url, fragments):
    """The bridge's WebSocket limit is the frame limit and 64 KiB
    (ws_max_size): past it the protocol closes with 1009, after the error
    in words. Sent whole, or in fragments each within the limit."""
    size = 20_000_000
    async with websockets.connect(ws_url) as ws:
        await ws.send("Describe")
        with contextlib.suppress(ConnectionClosed):  # the bridge may close before all is sent
            await ws.send(bytes(size) if fragments == 1 else [bytes(100_000)] * 2 + [bytes(size)])
        code, received = await closed_with(ws)
    limit = 200_000 + 64 * 1024
    said = f"message of {size if fragments == 1 else 200_000 + size} bytes is over the limit of {limit} bytes"
    assert received == [json.dumps({"error": said, "done": True})] and code == 1009


async def test_a_client_leaving_cancels_the_model_request(ws_url, fake_ollama):
    fake_ollama.token_delay = 0.2
    async with websockets.connect(ws_url) as ws:
        await ws.send("Describe")
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("red"))
        first = ollama_object(await ws.recv())
        assert first["done"] is False
    await wait_for(lambda: fake_ollama.cancelled, timeout=2)
    assert fake_ollama.cancelled == 1


async def test_ollama_down_is_said_before_closing(ws_url, fake_ollama):
    fake_ollama.stop()
    async with websockets.connect(ws_url) as ws:
        await ws.send("Describe")
        for batch in range(3):  # two failed answers are said; the third in a row closes the socket
            await ws.send(solid_jpeg("red"))
            await ws.send(solid_jpeg("red"))
            if batch < 2:
                assert (await text(ws)).startswith("no answer for these frames: Ollama is not reachable")
        code, received = await closed_with(ws)
    [message] = received
    assert "Ollama is not reachable" in json.loads(message)["error"] and code == 1013


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
@pytest.mark.parametrize("query", ["", "?format=text"])
async def test_the_original_javascript_client(ws_url, tmp_path, query):
    """The README's client, unchanged, reads binary answers (as Blobs) and text ones."""
    if not (TYPESCRIPT_CLIENT / "node_modules" / "typescript").exists():
        await run_in_typescript_client("npm", "ci", "--no-audit", "--no-fund", timeout=300)
    photos = []
    for colour in ("red", "green"):
        path = tmp_path / f"{colour}.jpg"
        path.write_bytes(solid_jpeg(colour))
        photos.append(str(path))
    process = await asyncio.create_subprocess_exec(
        shutil.which("node"), "--experimental-websocket", "--no-warnings", "tests/js/run_seed_client.mjs", *photos,
        env={**os.environ, "COMPUTE_NODE_URL": ws_url + query},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
    out = stdout.decode()
    assert process.returncode == 0, out + stderr.decode()
    assert out.splitlines() == [
        f"WebSocket URL:  {ws_url + query}",
        "WebSocket connected",
        f"[STREAMING] Sending photo to Compute Node {photos[0]}",
        f"[STREAMING] Sending photo to Compute Node {photos[1]}",
        "Compute Node response done: a 64x48 image, mostly red; a 64x48 image, mostly green",
    ], out + stderr.decode()
    assert not stderr, stderr.decode()  # no message it could not read


async def test_the_server_pings(settings):
    """Read raw frames with the websockets sans-I/O client: a PING arrives
    every WS_PING_INTERVAL."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.uri import parse_uri

    settings = dataclasses.replace(settings, ws_ping_interval=0.2)
    node = NodeServer(settings)
    await node.start()
    async with running_bridge(f"127.0.0.1:{node.port}", settings) as base:
        url = base.replace("http://", "ws://") + "/api/v1/ws"
        uri = parse_uri(url)
        reader, writer = await asyncio.open_connection(uri.host, uri.port)
        protocol = ClientProtocol(uri)
        protocol.send_request(protocol.connect())
        pings = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while pings < 2 and loop.time() < deadline:
            for data in protocol.data_to_send():
                writer.write(data)
            await writer.drain()
            protocol.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            pings += sum(1 for e in protocol.events_received() if isinstance(e, Frame) and e.opcode == Opcode.PING)
        for data in protocol.data_to_send():  # the pongs
            writer.write(data)
        writer.close()
    await node.stop(grace=0.5)
    assert pings >= 2


async def test_pages_the_node_does_not_allow_cannot_open_the_socket(ws_url):
    """Browsers send Origin on every handshake and let any page open a
    socket: the bridge refuses foreign ones (403) before accepting."""
    for origin in ("https://evil.example", "null", "http://localhost.evil.example"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url, origin=origin):
                pass
        assert refused.value.response.status_code == 403, origin
        assert refused.value.response.headers["X-Content-Type-Options"] == "nosniff"
        assert json.loads(refused.value.response.body)["error"].startswith("requests from this web page's origin")
    own = ws_url.replace("ws://", "http://").removesuffix("/api/v1/ws")
    for origin in (own, "http://localhost:5173", None):  # its own page, a local one, no page at all
        async with websockets.connect(ws_url, origin=origin) as ws:
            await ws.send("What colour?")
            await ws.send(solid_jpeg("red"))
            await ws.send(solid_jpeg("blue"))
            assert (await answer(ws))[1]["frames"] == ["1", "2"]


async def test_the_only_subprotocol_picked_is_vlmnode(ws_url):
    for offered, picked in ((["vlmnode"], "vlmnode"), (["other", "vlmnode"], "vlmnode"), (["other"], None)):
        async with websockets.connect(ws_url, subprotocols=offered) as ws:
            assert ws.subprotocol == picked, offered


async def test_a_node_out_of_reach_is_said_before_closing():
    """A bridge whose gRPC server is not listening says so, as REST's 503
    does, and closes as for any peer away (1013, try again later)."""
    async with running_bridge(f"127.0.0.1:{free_port()}") as base:
        async with websockets.connect(base.replace("http://", "ws://") + "/api/v1/ws") as ws:
            with contextlib.suppress(ConnectionClosed):  # the bridge may close before it reads these
                await ws.send("Describe")
                await ws.send(solid_jpeg("red"))
            code, received = await closed_with(ws)
    assert received == [json.dumps({"error": "the node's gRPC server is not reachable", "done": True})]
    assert code == 1013
