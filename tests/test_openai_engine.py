"""OpenAIEngine against the fake OpenAI-compatible server (vLLM's and
llama-server's ways: slots shared by many requests, a context that refuses,
errors inside streams), through the real `openai` client; and jobs run by a
worker whose VLM or LLM is on such a server, the other role on the fake Ollama."""

import asyncio
import base64
import dataclasses
import socket

import pytest

from devpeers.fake_openai import FakeOpenAI, ServedModel
from devpeers.images import solid_jpeg
from server.errors import BadInput, PeerRefused, PeerUnavailable
from server.openai_engine import OpenAIEngine
from server.peers import engines
from tests.fixtures import (
    COLOURS,
    as_dict,
    create_request,
    running_worker,
    vlm_requests,
    wait_final,
    wait_for,
)
from vlmnode.v1 import jobs_pb2

VLM = "Qwen/Qwen2.5-VL-3B-Instruct"
LLM = "Qwen/Qwen2.5-1.5B-Instruct"
SCHEMA = {
    "type": "object",
    "properties": {"start": {"type": "integer", "minimum": 1, "maximum": 3}, "reasoning": {"type": "string"}},
    "required": ["start", "reasoning"],
}
TIMELINE = "row,time,event\n1,10:00:00,a person walks in\n2,10:01:00,a red box on the shelf\n3,10:02:00,empty\n"


def vlm(fake, **kw) -> OpenAIEngine:
    return OpenAIEngine(fake.url, role="VLM", model=VLM, **kw)


def llm(fake, **kw) -> OpenAIEngine:
    return OpenAIEngine(fake.url, role="LLM", model=LLM, **{"num_ctx": 8192, **kw})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_answer_streams_in_chunks_and_ends_with_the_servers_counts(fake_openai):
    fake_openai.token_delay = 0.01
    async with vlm(fake_openai) as engine:
        chunks = [c async for c in engine.stream("how are you today", options={"num_predict": 20, "temperature": 0})]
    assert [c.text for c in chunks[:-1]] == ["You", " said:", " how", " are", " you", " today"]
    last = chunks[-1]
    assert last.done and last.done_reason == "stop" and last.model == VLM and last.created_at.endswith("Z")
    [request] = fake_openai.requests
    assert last.metrics["prompt_eval_count"] == request["prompt_tokens"] and last.metrics["eval_count"] == 6
    # Ollama's option names became the API's; every request streams, and asks for its counts.
    assert request["max_tokens"] == 20 and request["temperature"] == 0 and request["stream"]
    assert request["stream_options"] == {"include_usage": True}


async def test_a_caption_sends_the_image_as_a_jpeg_data_uri(fake_openai):
    jpeg = solid_jpeg("blue")
    async with vlm(fake_openai) as engine:
        assert await engine.caption(jpeg, "Describe the image", options={"num_predict": 50}) == "a 64x48 image, mostly blue"
    [request] = fake_openai.requests
    assert request["images"] == 1 and request["messages"] == ["Describe the image"]
    prefix, data = request["image_urls"][0].split(",", 1)
    assert prefix == "data:image/jpeg;base64" and base64.b64decode(data) == jpeg


async def test_the_llm_answers_in_the_json_schema_it_was_given(fake_openai):
    async with llm(fake_openai) as engine:
        answer = await engine.complete_json(TIMELINE + "When was the red box there?", SCHEMA,
                                            options={"temperature": 0, "num_predict": 300})
    assert answer["start"] == 2 and "red" in answer["reasoning"]
    [request] = fake_openai.requests
    assert request["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}


async def test_the_context_is_the_servers_as_each_lists_it():
    served = ServedModel(LLM, context_length=2048, n_ctx_train=32768)
    with FakeOpenAI([served]) as vllm, FakeOpenAI([served], flavour="llama.cpp") as llama:
        async with llm(vllm) as on_vllm, llm(llama) as on_llama:
            assert await on_vllm.window(LLM) == 2048  # max_model_len, under LLM_NUM_CTX
            assert await on_llama.window(LLM) == 2048  # a slot's n_ctx, not the model's n_ctx_train


async def test_a_prompt_too_long_is_refused_before_it_is_sent(fake_openai):
    async with llm(fake_openai, num_ctx=1024) as engine:
        with pytest.raises(BadInput, match="takes about .* but .* reads 1024") as info:
            await engine.complete_json("word " * 2000, SCHEMA)
    assert info.value.code == "prompt_too_long" and not fake_openai.requests


async def test_a_prompt_the_server_finds_too_long_is_our_error_and_estimates_grow():
    with FakeOpenAI([ServedModel(LLM, context_length=1024)]) as fake:
        async with llm(fake) as engine:
            engine.tokens[LLM].bytes_per_token = 50.0  # far too kind: our estimate lets it through
            with pytest.raises(BadInput, match="does not fit the context of .*maximum context length is 1024") as info:
                await engine.complete_json("word " * 2000, SCHEMA)
            assert info.value.code == "prompt_too_long" and engine.tokens[LLM].bytes_per_token < 50.0
    assert len(fake.requests) == 1


async def test_a_server_that_is_down_is_unavailable_in_one_line():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    async with OpenAIEngine(url, role="LLM", model=LLM) as engine:
        with pytest.raises(PeerUnavailable) as info:
            await engine.complete_json("hi", SCHEMA)
    assert info.value.message == f"the LLM's OpenAI-compatible server is not reachable at {url}: connection refused"


async def test_ready_asks_the_server_each_time(fake_openai):
    async with vlm(fake_openai) as engine:
        await engine.ready()
        fake_openai.stop()
        with pytest.raises(PeerUnavailable, match="is not reachable at"):
            await engine.ready()  # not answered from what the server listed before


async def test_a_model_the_server_does_not_serve_is_refused(fake_openai):
    async with vlm(fake_openai) as engine:
        with pytest.raises(PeerRefused, match="model 'llava:7b' is not served by the VLM's") as info:
            await anext(engine.stream("hi", model="llava:7b"))
        assert info.value.code == "model_missing"
        engine.model = "llava:7b"
        with pytest.raises(PeerRefused, match="not served"):
            await engine.ready()


async def test_a_server_failing_mid_answer_or_before_is_unavailable(fake_openai):
    async with vlm(fake_openai) as engine:
        fake_openai.mode = "stream_error"
        with pytest.raises(PeerUnavailable, match="failed mid-answer: EngineCore encountered an issue"):
            [c async for c in engine.stream("one two three four five six")]
        fake_openai.mode = "error"
        with pytest.raises(PeerUnavailable, match=r"failed: EngineCore .* \(HTTP 500\)"):
            await engine.ready()
        fake_openai.mode = "cut"
        with pytest.raises(PeerUnavailable, match="not reachable at .*: the connection was closed mid-answer"):
            [c async for c in engine.stream("one two three four five six")]


async def test_silence_longer_than_the_timeout_gives_up(fake_openai):
    async with vlm(fake_openai, timeout=0.3) as engine:
        await engine.ready()
        fake_openai.mode = "hang"
        with pytest.raises(PeerUnavailable, match="not reachable at .*: nothing heard for 0.3 s"):
            await engine.caption(solid_jpeg("red"), "what?")
        fake_openai.mode = "ok"


async def test_an_answer_longer_than_the_deadline_gives_up(fake_openai):
    fake_openai.token_delay = 0.05
    async with vlm(fake_openai, deadline=0.2) as engine:
        with pytest.raises(PeerUnavailable, match="did not finish an answer within 0.2 s") as info:
            [c async for c in engine.stream("word " * 40)]
    assert info.value.code == "answer_too_slow"


async def test_a_stream_closed_mid_way_frees_the_servers_slot(fake_openai):
    fake_openai.token_delay = 0.2
    async with vlm(fake_openai) as engine:
        stream = engine.stream("word " * 50)
        assert (await anext(stream)).text == "You"
        assert fake_openai.in_flight == 1
        await stream.aclose()
        await wait_for(lambda: fake_openai.in_flight == 0 and fake_openai.cancelled == 1, timeout=1)
        # The engine's own slot is free too: the next answer is not kept waiting.
        fake_openai.token_delay = 0
        assert (await engine.generate("again")).text == "You said: again"


async def test_no_more_requests_than_the_slots_reach_the_server(fake_openai):
    fake_openai.latency = 0.05
    async with vlm(fake_openai, slots=2) as engine:
        captions = await asyncio.gather(*(engine.caption(solid_jpeg(c), "?") for c in COLOURS))
    assert captions == [f"a 64x48 image, mostly {c}" for c in COLOURS]
    assert fake_openai.max_in_flight == 2


async def test_the_server_batches_its_slots_and_queues_the_rest():
    with FakeOpenAI(slots=3, latency=0.2) as fake:
        async with vlm(fake, slots=8) as engine:
            started = asyncio.get_running_loop().time()
            await asyncio.gather(*(engine.generate(f"n{i}") for i in range(6)))
            took = asyncio.get_running_loop().time() - started
    assert fake.max_in_flight == 3 and 0.4 <= took < 0.8  # two rounds of three, each round together


async def test_images_go_only_to_the_role_that_sees(fake_openai):
    async with llm(fake_openai) as engine:
        assert not (await engine.describe(LLM)).vision
        with pytest.raises(PeerRefused, match="cannot see images") as info:
            await engine.caption(solid_jpeg("red"), "what?")
    assert info.value.code == "model_unsuitable" and not fake_openai.requests


async def test_a_server_asking_for_a_key_gets_the_one_configured(tmp_path, settings):
    key_file = tmp_path / "key"
    key_file.write_text("sk-fake-1234\n")
    with FakeOpenAI(api_key="sk-fake-1234") as fake:
        async with OpenAIEngine(fake.url, role="LLM", model=LLM, api_key="wrong") as engine:
            with pytest.raises(PeerRefused, match=r"refused the request: Invalid API Key \(HTTP 401\)"):
                await engine.ready()
        configured = engines(dataclasses.replace(
            settings, llm_backend="openai", llm_base_url=fake.url, llm_model=LLM, llm_api_key_file=str(key_file)))
        try:
            await configured.llm.ready()
        finally:
            await configured.aclose()


async def test_the_roles_share_one_ollama_unless_told_apart(settings, fake_openai):
    from server.engine import OllamaEngine

    same = engines(settings)
    [(role, both)] = list(same.servers())
    assert same.vlm is same.llm and role == "VLM+LLM" and isinstance(both.engine, OllamaEngine)
    assert (both.engine.vlm_model, both.engine.llm_model) == (settings.vlm_model, settings.llm_model)
    mixed = engines(dataclasses.replace(settings, vlm_backend="openai", vlm_base_url=fake_openai.url, vlm_model=VLM))
    [(vlm_role, vlm), (llm_role, llm)] = list(mixed.servers())
    assert (vlm_role, llm_role) == ("VLM", "LLM")
    assert isinstance(vlm.engine, OpenAIEngine) and isinstance(llm.engine, OllamaEngine)
    assert llm.url == settings.ollama_host and llm.engine.vlm_model == ""  # it serves the LLM alone
    await mixed.ready()  # each role's model on its own server
    for built in (same, mixed):
        await built.aclose()


# -- jobs through a worker ------------------------------------------------------------

async def test_task_timing_with_the_llm_on_an_openai_server(settings, jobs, posemesh, fake_ollama, fake_openai):
    mixed = dataclasses.replace(settings, llm_backend="openai", llm_base_url=fake_openai.url, llm_model=LLM)
    async with running_worker(mixed):
        done = await wait_final(jobs, (await jobs.CreateJob(create_request())).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    output = as_dict(done.output)
    timeline = output["timeline"]
    assert output["task"]["start"]["image_id"] == timeline[1]["image_id"]
    assert output["task"]["end"]["image_id"] == timeline[4]["image_id"]
    # Captions on Ollama, the structured answer from the OpenAI-compatible server, with the job's timeline.
    assert len(vlm_requests(fake_ollama)) == len(COLOURS) and not [r for r in fake_ollama.requests if r["format"]]
    [asked] = fake_openai.requests
    assert asked["model"] == LLM and asked["response_format"]["type"] == "json_schema"
    assert all(row["caption"] in asked["messages"][0] for row in timeline)


async def test_captions_from_an_openai_server_and_the_llm_on_ollama(settings, jobs, posemesh, fake_ollama, fake_openai):
    mixed = dataclasses.replace(settings, vlm_backend="openai", vlm_base_url=fake_openai.url, vlm_model=VLM)
    async with running_worker(mixed):
        done = await wait_final(jobs, (await jobs.CreateJob(create_request())).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    timeline = as_dict(done.output)["timeline"]
    assert [row["caption"] for row in timeline] == [f"a 64x48 image, mostly {c}" for c in COLOURS]
    assert [r["images"] for r in fake_openai.requests] == [1] * len(COLOURS)
    assert not vlm_requests(fake_ollama) and [r["model"] for r in fake_ollama.requests if r["format"]] == [
        "llama3:latest"]


async def test_a_text_only_model_as_the_vlm_is_refused_at_the_check():
    """llama-server says what a model takes (architecture.input_modalities): a
    text-only one as the VLM is refused as Ollama's non-vision VLM is."""
    with FakeOpenAI([ServedModel(VLM)], flavour="llama.cpp") as server:
        async with vlm(server) as engine:
            with pytest.raises(PeerRefused, match=f"VLM_MODEL {VLM} cannot see images") as info:
                await engine.check_models()
    assert info.value.code == "model_unsuitable" and len(info.value.message.splitlines()) == 1
    with FakeOpenAI([ServedModel(VLM, max_images=1)], flavour="llama.cpp") as server:
        async with vlm(server) as engine:
            assert await engine.check_models() == []
