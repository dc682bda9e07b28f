"""The WebSocket `/api/v1/ws` of the original node, through the bridge and
the Infer RPC, driven by real clients: the `websockets` library, and the
original README's JavaScript client under Node."""

import asyncio
import dataclasses
import json
import os
import shutil

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from server.grpc_server import NodeServer
from tests.conftest import running_bridge, wait_for
from tests.images import solid_jpeg

NO_PROMPT = "No prompt received for image batch"


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


async def answer(ws) -> tuple[str, dict]:
    """Reads JSON messages until one is done; returns the text and the last."""
    text = ""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert set(message) >= {"response", "done"}, message
        text += message["response"]
        if message["done"]:
            return text, message


async def test_prompt_then_a_batch_of_images(ws_url, fake_ollama):
    async with websockets.connect(ws_url) as ws:
        await ws.send("What colour is it?")
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("blue"))
        text, last = await answer(ws)
        assert text == "a 64x48 image, mostly red; a 64x48 image, mostly blue"
        assert last["frames"] == ["1", "2"] and last["frames_dropped"] == 0
        assert await ws.ping()  # answers pings
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["prompt"] == "What colour is it?" and request["images"] == 2


async def test_images_before_a_prompt(ws_url):
    async with websockets.connect(ws_url) as ws:
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("blue"))
        assert await asyncio.wait_for(ws.recv(), 10) == NO_PROMPT
        await ws.send("And these?")
        await ws.send(solid_jpeg("green"))
        await ws.send(solid_jpeg("white"))
        text, _ = await answer(ws)
        assert "green" in text and "white" in text


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
        text, _ = await answer(ws)
        assert len(text.split()) == 3
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["options"]["num_predict"] == 3


@pytest.mark.parametrize("value", ["abc", "-1", "99999999"])
async def test_bad_num_predict_is_refused(ws_url, value):
    async with websockets.connect(f"{ws_url}?num_predict={value}") as ws:
        message = json.loads(await ws.recv())
        assert "num_predict must be an integer" in message["error"]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1008


async def test_a_non_image_is_refused_clearly(ws_url, fake_ollama):
    async with websockets.connect(ws_url) as ws:
        await ws.send("Describe")
        await ws.send(b"definitely not a jpeg")
        message = json.loads(await ws.recv())
        assert message["error"] == "frame 1: not an image"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1008 and "not an image" in closed.value.rcvd.reason
    assert fake_ollama.requests == []


async def test_oversized_images_are_refused(ws_url):
    # Over the frame limit but within a WebSocket message: the node says so.
    async with websockets.connect(ws_url) as ws:
        await ws.send(b"\xff\xd8\xff" + bytes(250_000))
        message = json.loads(await ws.recv())
        assert "over the limit of 200000" in message["error"]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009
    # Over the WebSocket message limit: the bridge closes before reading it all.
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(bytes(2_000_000))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009


async def test_a_client_leaving_cancels_the_model_request(ws_url, fake_ollama):
    fake_ollama.token_delay = 0.2
    async with websockets.connect(ws_url) as ws:
        await ws.send("Describe")
        await ws.send(solid_jpeg("red"))
        await ws.send(solid_jpeg("red"))
        first = json.loads(await ws.recv())
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
                assert (await ws.recv()).startswith("no answer for these frames: Ollama is not reachable")
        message = json.loads(await ws.recv())
        assert "Ollama is not reachable" in message["error"]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1013


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_the_original_javascript_client(ws_url, tmp_path):
    photos = []
    for colour in ("red", "green"):
        path = tmp_path / f"{colour}.jpg"
        path.write_bytes(solid_jpeg(colour))
        photos.append(str(path))
    process = await asyncio.create_subprocess_exec(
        shutil.which("node"), "--experimental-websocket", "--no-warnings", "tests/js/seed_client.mjs", *photos,
        env={**os.environ, "COMPUTE_NODE_URL": ws_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    out = stdout.decode()
    assert process.returncode == 0, out + stderr.decode()
    assert "WebSocket connected" in out
    assert "Compute Node response done: a 64x48 image, mostly red; a 64x48 image, mostly green" in out
    assert "not in expected format" not in out


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
