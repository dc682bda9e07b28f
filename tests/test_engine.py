"""OllamaEngine against the fake Ollama: a real HTTP server and the real ollama client."""

import asyncio
import socket

import ollama
import pytest

from server.engine import OllamaEngine
from server.errors import PeerRefused, PeerUnavailable
from tests.conftest import wait_for
from tests.images import solid_jpeg
from tests.peers.fake_ollama import FakeOllama

VLM = "moondream:1.8b"
LLM = "llama3:latest"
TIMING_SCHEMA = {
    "type": "object",
    "properties": {
        "start": {"type": ["object", "null"]},
        "end": {"type": ["object", "null"]},
        "reasoning": {"type": "string"},
    },
    "required": ["start", "end", "reasoning"],
}


@pytest.fixture
def fake():
    with FakeOllama() as server:
        yield server


@pytest.fixture
async def engine(fake):
    async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, timeout=5) as eng:
        yield eng


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_caption_tells_colours_apart(engine, fake):
    red = await engine.caption(solid_jpeg("red"), "What is in the picture?")
    blue = await engine.caption(solid_jpeg("blue", (32, 32)), "What is in the picture?")
    assert red == "a 64x48 image, mostly red"
    assert blue == "a 32x32 image, mostly blue"
    assert [r["model"] for r in fake.requests] == [VLM, VLM]
    assert fake.requests[0]["images"] == 1 and fake.requests[0]["prompt"] == "What is in the picture?"


async def test_stream_yields_chunks_then_done(engine, fake):
    chunks = [c async for c in engine.stream("describe", [solid_jpeg("yellow"), solid_jpeg("green")])]
    assert len(chunks) > 2
    assert [done for _, done in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(text for text, _ in chunks) == "a 64x48 image, mostly yellow; a 64x48 image, mostly green"
    assert fake.requests[-1]["stream"] is True and fake.requests[-1]["images"] == 2


async def test_num_predict_and_temperature_are_passed(engine, fake):
    options = {"num_predict": 3, "temperature": 0.2}
    chunks = [c async for c in engine.stream("describe", [solid_jpeg("red")], options=options)]
    assert "".join(text for text, _ in chunks) == "a 64x48 image,"
    assert fake.requests[-1]["options"] == options
    assert await engine.caption(solid_jpeg("red"), "x", options={"num_predict": 2}) == "a 64x48"


async def test_complete_json_answers_from_the_timeline(engine, fake):
    prompt = (
        "When did the worker restock the red shelf?\n"
        "id,timestamp,event\n"
        "img1,2024-01-01T10:00:00Z,a person walks in\n"
        "img2,2024-01-01T10:01:00Z,a person holds a red box, near the shelf\n"
        "img3,2024-01-01T10:02:00Z,the red shelf is full\n"
        "img4,2024-01-01T10:03:00Z,the aisle is empty\n"
    )
    answer = await engine.complete_json(prompt, TIMING_SCHEMA)
    assert answer["start"]["image_id"] == "img2" and answer["start"]["timestamp"] == "2024-01-01T10:01:00Z"
    assert answer["end"]["image_id"] == "img3"
    assert isinstance(answer["start"]["confidence"], float) and answer["reasoning"]
    assert fake.requests[-1]["model"] == LLM and fake.requests[-1]["format"] == TIMING_SCHEMA


async def test_complete_json_with_empty_timeline(engine):
    answer = await engine.complete_json("When?\nid,timestamp,event\n", TIMING_SCHEMA)
    assert answer["start"] is None and answer["end"] is None and "no events" in answer["reasoning"]


async def test_cut_json_answer_is_a_bad_model_answer(engine):
    with pytest.raises(PeerUnavailable) as failed:
        await engine.complete_json("id,timestamp,event\na,b,c\n", TIMING_SCHEMA, options={"num_predict": 3})
    assert failed.value.code == "bad_model_answer" and failed.value.transient


async def test_concurrency_is_bounded():
    with FakeOllama(latency=0.15) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, max_concurrency=2) as engine:
            answers = await asyncio.gather(*(engine.caption(solid_jpeg("red"), "x") for _ in range(6)))
    assert len(answers) == 6
    assert fake.max_in_flight == 2


async def test_ollama_down_is_unavailable_with_a_clear_message():
    url = closed_port_url()
    async with OllamaEngine(url, vlm_model=VLM, llm_model=LLM) as engine:
        for call in (engine.caption(solid_jpeg("red"), "x"), engine.check_models(), engine.version()):
            with pytest.raises(PeerUnavailable) as failed:
                await call
            assert failed.value.message == f"Ollama is not reachable at {url}: connection refused"
            assert failed.value.transient
        with pytest.raises(PeerUnavailable, match="connection refused"):
            async for _ in engine.stream("x"):
                pass


async def test_unknown_model_is_refused(fake):
    async with OllamaEngine(fake.url, vlm_model="llava:7b", llm_model=LLM) as engine:
        with pytest.raises(PeerRefused) as refused:
            await engine.caption(solid_jpeg("red"), "x")
        assert refused.value.code == "model_missing"
        assert refused.value.message == f"model 'llava:7b' is not available on Ollama at {fake.url}"
        with pytest.raises(PeerRefused, match="llava:7b"):
            async for _ in engine.stream("x"):
                pass


async def test_check_models_pulls_what_is_missing():
    with FakeOllama(models={"llama3"}) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model="llama3") as engine:
            with pytest.raises(PeerRefused, match="moondream"):
                await engine.check_models(pull=False)
            assert await engine.check_models() == [VLM]
            assert VLM in fake.models
            assert await engine.check_models() == []
            assert await engine.caption(solid_jpeg("white"), "x") == "a 64x48 image, mostly white"


async def test_check_models_reports_a_failed_pull():
    with FakeOllama(models={LLM}, pullable=set()) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM) as engine:
            with pytest.raises(PeerRefused) as refused:
                await engine.check_models()
    assert refused.value.code == "model_missing"
    assert "could not pull model 'moondream:1.8b'" in refused.value.message


async def test_garbage_answers_are_errors_not_crashes(engine, fake):
    fake.mode = "garbage"
    for call in (engine.caption(solid_jpeg("red"), "x"), engine.check_models(), engine.version()):
        with pytest.raises(PeerUnavailable) as failed:
            await call
        assert failed.value.code == "bad_model_answer"
    with pytest.raises(PeerUnavailable, match="invalid answer"):
        async for _ in engine.stream("x"):
            pass
    fake.mode = "ok"
    assert await engine.caption(solid_jpeg("red"), "x") == "a 64x48 image, mostly red"


async def test_server_errors_are_transient(engine, fake):
    fake.mode = "error"
    with pytest.raises(PeerUnavailable, match=r"Ollama at .* failed: .*\(HTTP 500\)") as failed:
        await engine.caption(solid_jpeg("red"), "x")
    assert failed.value.transient and failed.value.code == "peer_unavailable"


async def test_cancelling_the_consumer_stops_the_request():
    with FakeOllama(token_delay=0.2) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM) as engine:
            first = asyncio.Event()

            async def consume():
                async for _ in engine.stream("x", [solid_jpeg("red")]):
                    first.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: fake.cancelled == 1, timeout=2)
            assert fake.in_flight == 0
            assert [c async for c in engine.stream("x", options={"num_predict": 1})][-1][1] is True


async def test_an_answer_cut_short_is_unavailable(engine, fake):
    fake.mode = "cut"
    with pytest.raises(PeerUnavailable) as failed:
        async for _ in engine.stream("x", [solid_jpeg("red")]):
            pass
    assert failed.value.message == f"Ollama is not reachable at {fake.url}: the connection was closed mid-answer"
    fake.mode = "ok"
    assert await engine.caption(solid_jpeg("red"), "x") == "a 64x48 image, mostly red"


async def test_unknown_host_is_said():
    url = "http://no-such-host.invalid:11434"
    async with OllamaEngine(url, vlm_model=VLM, llm_model=LLM) as engine:
        with pytest.raises(PeerUnavailable) as failed:
            await engine.version()
    assert failed.value.message == f"Ollama is not reachable at {url}: unknown host"


async def test_hanging_ollama_times_out():
    with FakeOllama() as fake:
        fake.mode = "hang"
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, timeout=0.3) as engine:
            with pytest.raises(PeerUnavailable) as failed:  # not asyncio's TimeoutError: the engine's own timeout fired
                await asyncio.wait_for(engine.caption(solid_jpeg("red"), "x"), 1.5)
    assert failed.value.message == f"Ollama is not reachable at {fake.url}: no answer within 0.3 s"


async def test_version(engine):
    assert await engine.version() == "0.0.0-fake"


def test_fake_serves_the_sync_client_too(fake):
    with ollama.Client(fake.url) as client:
        check_sync_client(client)


def check_sync_client(client: ollama.Client) -> None:
    assert {m.model for m in client.list().models} == {VLM, LLM}
    answer = client.chat(LLM, [{"role": "user", "content": "hi", "images": [solid_jpeg("black")]}])
    assert answer.message.content == "a 64x48 image, mostly black" and answer.done_reason == "stop"
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("nope")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as bad_image:
        client.generate(VLM, "x", images=[b"not an image"])
    assert bad_image.value.status_code == 400


def test_fake_fail_rate_is_deterministic():
    def failures() -> list[bool]:
        with FakeOllama(fail_rate=0.5, seed=7) as fake, ollama.Client(fake.url) as client:
            results = []
            for _ in range(10):
                try:
                    client.generate(LLM, "x")
                    results.append(False)
                except ollama.ResponseError as e:
                    assert e.status_code == 500
                    results.append(True)
            return results

    first = failures()
    assert first == failures() and 0 < sum(first) < 10
