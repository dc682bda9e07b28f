"""OllamaEngine against the strict fake Ollama: a real HTTP server and the real
ollama client, with Ollama's own defaults (one request at a time, a context
window, errors inside streams)."""

import asyncio
import socket

import ollama
import pytest

from devpeers.fake_ollama import FakeOllama
from devpeers.images import solid_jpeg
from server import metrics
from server.engine import METRICS, OllamaEngine
from server.errors import BadInput, PeerRefused, PeerUnavailable
from server.retry import RetryStrategy
from tests.fixtures import wait_for

QUICK_RETRY = RetryStrategy(max_attempts=3, wait=0.01)
VLM = "moondream:1.8b"
LLM = "llama3:latest"
TIMING_SCHEMA = {
    "type": "object",
    "properties": {
        "start": {"type": ["object", "null"], "properties": {"row": {"type": "integer", "minimum": 1, "maximum": 4}}},
        "end": {"type": ["object", "null"], "properties": {"row": {"type": "integer", "minimum": 1, "maximum": 4}}},
        "reasoning": {"type": "string"},
    },
    "required": ["start", "end", "reasoning"],
}
TIMELINE = (
    "row,time,event\n"
    "1,10:00:00,a person walks in\n"
    "2,10:01:00,a person holds a red box near the shelf\n"
    "3,10:02:00,the red shelf is full\n"
    "4,10:03:00,the aisle is empty\n"
)


@pytest.fixture
def fake():
    with FakeOllama() as server:
        yield server


@pytest.fixture
async def engine(fake):
    async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, timeout=5, llm_num_ctx=4096) as eng:
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


async def test_every_request_streams_and_asks_for_a_fixed_context(engine, fake):
    await engine.caption(solid_jpeg("red"), "x")
    await engine.complete_json(f"{TIMELINE}\nWhen was the red box there?", TIMING_SCHEMA)
    async for _ in engine.stream("x", [solid_jpeg("red")]):
        pass
    # Not one request waits for a whole answer in silence (stream: false writes nothing until done).
    assert [r["stream"] for r in fake.requests] == [True, True, True]
    # moondream was trained for 2048 tokens, llama3 for 8192; the engine asks 4096 of each, as capped.
    assert [r["num_ctx"] for r in fake.requests] == [2048, 4096, 2048]
    assert [r["options"]["num_ctx"] for r in fake.requests] == [2048, 4096, 2048]
    assert fake.loads == 2  # one per model: the same num_ctx every time never reloads


async def test_stream_yields_chunks_then_done(engine, fake):
    chunks = [c async for c in engine.stream("describe", [solid_jpeg("yellow")])]
    assert len(chunks) > 2
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.text for c in chunks) == "a 64x48 image, mostly yellow"
    # Each with Ollama's model and time; the last with why it stopped and Ollama's counts.
    assert {c.model for c in chunks} == {VLM} and all(c.created_at.endswith("Z") for c in chunks)
    assert chunks[-1].done_reason == "stop" and chunks[-1].metrics["eval_count"] == 5
    assert set(chunks[-1].metrics) <= set(METRICS) and chunks[-1].metrics["total_duration"] > 0
    assert not any(c.done_reason or c.metrics for c in chunks[:-1])


async def test_num_predict_and_temperature_are_passed(engine, fake):
    options = {"num_predict": 3, "temperature": 0.2}
    chunks = [c async for c in engine.stream("describe", [solid_jpeg("red")], options=options)]
    assert "".join(c.text for c in chunks) == "a 64x48 image,"
    assert fake.requests[-1]["options"] == {**options, "num_ctx": 2048}
    answer = await engine.generate("x", [solid_jpeg("red")], options={"num_predict": 2})
    assert (answer.text, answer.done_reason) == ("a 64x48", "length")


async def test_complete_json_answers_from_the_timeline(engine, fake):
    answer = await engine.complete_json(f"{TIMELINE}\nWhen did the worker restock the red shelf?", TIMING_SCHEMA)
    assert answer["start"]["row"] == 2 and answer["end"]["row"] == 3
    assert fake.requests[-1]["model"] == LLM and fake.requests[-1]["format"] == TIMING_SCHEMA


async def test_a_cut_json_answer_is_a_bad_model_answer(engine):
    with pytest.raises(PeerUnavailable) as failed:
        await engine.complete_json(f"{TIMELINE}\nred?", TIMING_SCHEMA, options={"num_predict": 3})
    assert failed.value.code == "bad_model_answer" and failed.value.transient
    assert "cut at its length limit" in failed.value.message


# -- 1. one request at a time ----------------------------------------------------------------------------------
async def test_one_slot_per_model_by_default_and_the_wait_is_measured():
    def waited() -> float:  # seconds VLM captions waited for a slot, so far
        [family] = metrics.OLLAMA_SLOT_WAIT.collect()
        return sum(s.value for s in family.samples if s.name.endswith("_sum") and s.labels == {"model": VLM})

    before = waited()
    with FakeOllama(latency=0.1) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM) as engine:
            answers = await asyncio.gather(
                *(engine.caption(solid_jpeg("red"), "x") for _ in range(4)),
                engine.complete_json(f"{TIMELINE}\nred?", TIMING_SCHEMA),
            )
    assert len(answers) == 5
    # Ollama never had to queue: the engine held the rest back, one per model.
    assert fake.max_in_flight_by_model == {VLM: 1, LLM: 1}
    assert not any(r["waited"] for r in fake.requests)
    assert waited() - before > 0.2  # three captions waited for the one before


async def test_more_slots_when_ollama_has_them():
    with FakeOllama(num_parallel=3, latency=0.15) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, num_parallel=3) as engine:
            await asyncio.gather(*(engine.caption(solid_jpeg("red"), "x") for _ in range(6)))
    assert fake.max_in_flight_by_model[VLM] == 3
    assert not any(r["waited"] for r in fake.requests)


# -- 2. streaming: silence times out, a steady answer does not ---------------------------------------------------
async def test_a_slow_steady_answer_is_not_cut_by_the_silence_timeout():
    with FakeOllama(token_delay=0.15) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, timeout=0.5) as engine:
            # Five words at 0.15 s: longer than the timeout in all, never that long in silence.
            text = await engine.caption(solid_jpeg("red"), "x")
    assert text == "a 64x48 image, mostly red"


async def test_the_whole_answer_has_a_deadline():
    with FakeOllama(token_delay=0.15) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, timeout=5, deadline=0.3) as engine:
            with pytest.raises(PeerUnavailable) as failed:
                await engine.caption(solid_jpeg("red"), "x")
    assert failed.value.code == "answer_too_slow" and failed.value.transient
    assert "within 0.3 s" in failed.value.message


async def test_hanging_ollama_times_out():
    with FakeOllama() as fake:
        fake.mode = "hang"
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, timeout=0.3) as engine:
            with pytest.raises(PeerUnavailable) as failed:  # not asyncio's TimeoutError: the engine's own timeout fired
                await asyncio.wait_for(engine.ready(), 1.5)
    assert failed.value.message == f"Ollama is not reachable at {fake.url}: nothing heard for 0.3 s"


# -- 3. the context window ---------------------------------------------------------------------------------------
async def test_a_prompt_that_would_not_fit_is_never_sent(engine, fake):
    long_task = "When was the red box there? " * 400  # ~11,000 bytes: over 4096 tokens at the first estimate
    with pytest.raises(BadInput) as refused:
        await engine.complete_json(f"{TIMELINE}\n{long_task}", TIMING_SCHEMA, options={"num_predict": 200})
    assert refused.value.code == "prompt_too_long" and f"{LLM} reads 4096" in refused.value.message
    assert not [r for r in fake.requests if r["model"] == LLM]
    assert not await engine.fits(LLM, long_task)
    assert await engine.fits(LLM, TIMELINE)


async def test_estimates_learn_from_what_ollama_counted(engine, fake):
    estimator = engine.tokens[LLM]
    first = estimator.bytes_per_token
    prompt = f"{TIMELINE}\n" + "The shelf holds cereal boxes in many colours. " * 20 + "red?"
    await engine.complete_json(prompt, TIMING_SCHEMA)
    counted = fake.requests[-1]["prompt_eval_count"]
    assert estimator.prompt(prompt) >= counted  # still on the large side, as it must be
    assert estimator.bytes_per_token != first
    await engine.caption(solid_jpeg("red"), "x")
    assert engine.tokens[VLM].image_tokens >= 729  # moondream's real cost, measured, not the first guess


async def test_an_image_prompt_ollama_refuses_as_too_long_is_said_and_learnt():
    with FakeOllama(["llava:7b", LLM]) as fake:
        async with OllamaEngine(fake.url, vlm_model="llava:7b", llm_model=LLM, vlm_num_ctx=2048) as engine:
            engine.tokens["llava:7b"].image_tokens = 100  # far too kind a guess: the engine lets it through
            with pytest.raises(BadInput) as refused:
                await engine.generate("x", [solid_jpeg("red")] * 4, model="llava:7b", options={"num_predict": 64})
            assert refused.value.code == "prompt_too_long" and "exceeds the available context" in refused.value.message
            assert engine.tokens["llava:7b"].image_tokens > 100


# -- 6. capabilities --------------------------------------------------------------------------------------------
async def test_describe_reads_capabilities_and_context(engine):
    vlm, llm = await engine.describe(VLM), await engine.describe("llama3")
    assert vlm.vision and not vlm.several_images and vlm.context_length == 2048
    assert not llm.vision and llm.context_length == 8192 and llm.name == LLM
    assert await engine.window(VLM) == 2048 and await engine.window(LLM) == 4096


async def test_a_vlm_that_cannot_see_is_refused():
    with FakeOllama([LLM]) as fake:
        async with OllamaEngine(fake.url, vlm_model=LLM, llm_model=LLM) as engine:
            with pytest.raises(PeerRefused) as refused:
                await engine.check_models()
            assert refused.value.code == "model_unsuitable"
            assert refused.value.message.startswith(f"VLM_MODEL {LLM} cannot see images")
            with pytest.raises(PeerRefused, match="cannot see images"):
                await engine.ready()
            # Images never go to it: Ollama would drop them and answer about nothing.
            with pytest.raises(PeerRefused, match="cannot see images"):
                await engine.caption(solid_jpeg("red"), "x")
    assert not fake.requests


async def test_a_model_that_sees_several_images_is_known(fake):
    with FakeOllama(["gemma3:4b", LLM]) as fake:
        async with OllamaEngine(fake.url, vlm_model="gemma3:4b", llm_model=LLM) as engine:
            assert (await engine.describe("gemma3:4b")).several_images
            text = "".join([c.text async for c in engine.stream("x", [solid_jpeg("red"), solid_jpeg("blue")])])
    assert text == "a 64x48 image, mostly red; a 64x48 image, mostly blue"


# -- 7. errors as the real server sends them -------------------------------------------------------------------
async def test_an_error_inside_a_stream_is_transient(engine, fake):
    fake.mode = "stream_error"
    with pytest.raises(PeerUnavailable) as failed:
        await engine.caption(solid_jpeg("red"), "x")
    assert failed.value.message.startswith(f"Ollama at {fake.url} failed mid-answer: ")
    chunks = []
    with pytest.raises(PeerUnavailable, match="failed mid-answer"):
        async for chunk in engine.stream("x", [solid_jpeg("red")]):
            chunks.append(chunk.text)
    assert chunks  # the answer had started: HTTP 200, then the error line


async def test_a_missing_model_is_pulled_and_the_request_goes_on():
    with FakeOllama([LLM]) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM) as engine:
            assert await engine.caption(solid_jpeg("white"), "x") == "a 64x48 image, mostly white"
    assert VLM in fake.models


async def test_without_pulling_a_missing_model_is_refused(fake):
    async with OllamaEngine(fake.url, vlm_model="llava:7b", llm_model=LLM, pull=False) as engine:
        with pytest.raises(PeerRefused) as refused:
            await engine.caption(solid_jpeg("red"), "x")
        assert refused.value.code == "model_missing"
        assert refused.value.message == f"model 'llava:7b' is not available on Ollama at {fake.url}"
        with pytest.raises(PeerRefused, match="llava:7b"):
            async for _ in engine.stream("x", model="llava:7b"):
                pass


async def test_check_models_pulls_what_is_missing():
    with FakeOllama(models={"llama3"}) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model="llama3") as engine:
            with pytest.raises(PeerRefused, match="moondream"):
                await engine.check_models(pull=False)
            assert await engine.check_models() == [VLM]
            assert VLM in fake.models
            assert await engine.check_models() == []


async def test_a_pull_the_registry_refuses_is_final():
    with FakeOllama(models={LLM}, pullable=set()) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM) as engine:
            with pytest.raises(PeerRefused) as refused:
                await engine.check_models()
    assert refused.value.code == "model_missing"
    assert refused.value.message.endswith("pull model manifest: file does not exist")


async def test_a_pull_that_fails_for_a_passing_reason_is_tried_again():
    with FakeOllama(models={LLM}, pull_failures=["network", "download"]) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, pull_retry=QUICK_RETRY) as engine:
            assert await engine.check_models() == [VLM]
    assert VLM in fake.models


async def test_a_pull_that_keeps_failing_is_transient():
    with FakeOllama(models={LLM}, pull_failures=5) as fake:
        async with OllamaEngine(fake.url, vlm_model=VLM, llm_model=LLM, pull_retry=QUICK_RETRY) as engine:
            with pytest.raises(PeerUnavailable) as failed:
                await engine.check_models()
    assert failed.value.transient and "no such host" in failed.value.message


async def test_ollama_down_is_unavailable_with_a_clear_message():
    url = closed_port_url()
    async with OllamaEngine(url, vlm_model=VLM, llm_model=LLM) as engine:
        for call in (engine.caption(solid_jpeg("red"), "x"), engine.check_models(), engine.ready()):
            with pytest.raises(PeerUnavailable) as failed:
                await call
            assert failed.value.message == f"Ollama is not reachable at {url}: connection refused"
            assert failed.value.transient
        with pytest.raises(PeerUnavailable, match="connection refused"):
            async for _ in engine.stream("x"):
                pass


async def test_garbage_answers_are_errors_not_crashes(engine, fake):
    await engine.ready()  # described while Ollama was sane
    fake.mode = "garbage"
    for call in (engine.caption(solid_jpeg("red"), "x"), engine.check_models()):
        with pytest.raises(PeerUnavailable) as failed:
            await call
        assert failed.value.code == "bad_model_answer"
    fake.mode = "ok"
    assert await engine.caption(solid_jpeg("red"), "x") == "a 64x48 image, mostly red"


async def test_server_errors_are_transient(engine, fake):
    await engine.ready()
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
            # Its slot is free again: the next request does not wait.
            assert [c async for c in engine.stream("x", [solid_jpeg("red")], options={"num_predict": 1})][-1].done


async def test_an_answer_cut_short_is_unavailable(engine, fake):
    await engine.ready()
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
            await engine.ready()
    assert failed.value.message == f"Ollama is not reachable at {url}: unknown host"


def test_fake_serves_the_sync_client_too(fake):
    with ollama.Client(fake.url) as client:
        assert {m.model for m in client.list().models} == {VLM, LLM}
        answer = client.chat(VLM, [{"role": "user", "content": "hi", "images": [solid_jpeg("black")]}])
        assert answer.message.content == "a 64x48 image, mostly black" and answer.done_reason == "stop"
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("nope")
        assert missing.value.status_code == 404
