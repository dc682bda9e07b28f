"""The fake Ollama is a model of Ollama v0.32.15, never kinder: these tests
show what a caller of the real one must live with, through the real `ollama`
clients (sync and async) over real sockets."""

import asyncio
import json
import socket
import subprocess
import sys

import httpx
import ollama
import pytest

from devpeers.fake_ollama import MAX_QUEUE_MESSAGE, FakeOllama, count_tokens
from devpeers.images import solid_jpeg
from tests.fixtures import wait_for

VLM = "moondream:1.8b"
LLM = "llama3:latest"
RED_ROWS = (2, 5)  # of the six rows below


def timeline(colours=("white", "red", "blue", "blue", "red", "green"), rows=None) -> str:
    rows = rows or [f"{n},16:4{n % 10}:00,a 64x48 image, mostly {c}" for n, c in enumerate(colours, 1)]
    return "\n".join(["row,time,event", *rows])


def moment(row: dict) -> dict:
    return {"type": ["object", "null"], "properties": {
        "row": row, "photo": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1}, "reasoning": {"type": "string"}},
        "required": ["row", "photo", "confidence", "reasoning"]}


def answer_schema(row: dict) -> dict:
    return {"type": "object", "properties": {
        "start": moment(row), "end": moment(row), "colour": {"enum": ["blue", "red", "green"]},
        "reasoning": {"type": "string", "maxLength": 24}}, "required": ["start", "end", "colour", "reasoning"]}


@pytest.fixture
def fake():
    with FakeOllama() as server:
        yield server


# -- one request at a time -------------------------------------------------------------------------------------
async def test_one_request_at_a_time_by_default():
    with FakeOllama(latency=0.3) as fake:
        async with ollama.AsyncClient(fake.url) as client:
            first, second = await asyncio.gather(client.generate(LLM, "first"), client.generate(LLM, "second"))
    assert {first.response, second.response} == {"You said: first", "You said: second"}
    assert fake.max_in_flight == 1 and fake.max_in_flight_by_model == {LLM: 1}
    assert sorted(r["waited"] for r in fake.requests) == [False, True]  # the second found the slot taken
    assert fake.loads == 1


async def test_num_parallel_slots_answer_at_once():
    with FakeOllama(num_parallel=4, latency=0.3) as fake:
        async with ollama.AsyncClient(fake.url) as client:
            answers = await asyncio.gather(*(client.generate(LLM, f"n{i}") for i in range(5)))
    assert len(answers) == 5
    assert fake.max_in_flight_by_model[LLM] == 4
    assert sum(r["waited"] for r in fake.requests) == 1


async def test_a_full_pending_queue_answers_503_while_the_model_loads():
    with FakeOllama(max_queue=1, load_time=0.5) as fake:
        async with ollama.AsyncClient(fake.url) as client:
            loading = asyncio.create_task(client.generate(LLM, "a"))
            await wait_for(lambda: fake.requests, every=0.01)
            queued = asyncio.create_task(client.generate(LLM, "b"))
            await wait_for(lambda: fake.pending == 1, every=0.01)  # "a" loads the model, "b" is in the queue
            with pytest.raises(ollama.ResponseError) as busy:
                await client.generate(LLM, "c")
            assert busy.value.status_code == 503 and busy.value.error == MAX_QUEUE_MESSAGE
            assert [(await t).response for t in (loading, queued)] == ["You said: a", "You said: b"]
    assert fake.loads == 1


async def test_a_client_leaving_while_it_waits_frees_its_place():
    with FakeOllama(latency=0.4) as fake:
        async with ollama.AsyncClient(fake.url) as client:
            running = asyncio.create_task(client.generate(LLM, "a"))
            await wait_for(lambda: fake.in_flight == 1, every=0.01)
            waiting = asyncio.create_task(client.generate(LLM, "b"))
            await wait_for(lambda: fake.waiting == 1, every=0.01)
            waiting.cancel()
            await wait_for(lambda: fake.cancelled == 1, timeout=2, every=0.01)
            assert fake.waiting == 0
            assert (await running).response == "You said: a"
    assert fake.in_flight == 0 and [r["done_reason"] for r in fake.requests] == ["stop", None]


def test_stream_false_writes_nothing_until_the_answer_is_done():
    with FakeOllama(token_delay=0.1) as fake, httpx.Client(base_url=fake.url) as http:
        body = {"model": LLM, "prompt": "one two three four", "stream": False}
        with http.stream("POST", "/api/generate", json=body) as answer:
            assert fake.requests[-1]["done_reason"] == "stop"  # headers came only once the model was done
            whole = json.loads(answer.read())
        assert whole["response"] == "You said: one two three four" and whole["done"] is True
        with http.stream("POST", "/api/generate", json=body | {"stream": True}) as answer:
            assert fake.requests[-1]["done_reason"] is None  # streamed: the first token comes at once
            assert len(answer.read().splitlines()) == 7


# -- the context window ----------------------------------------------------------------------------------------
def expected_cut(num_ctx: int, num_keep: int) -> int:
    """Tokens left of a cut prompt (llm/llama_server.go contextShiftPromptLimit), the BOS kept too."""
    return num_ctx - (num_ctx - (num_keep + 1)) // 2


def test_a_long_text_prompt_loses_its_front_silently(fake):
    preface = "Below is what a pair of smart glasses saw in a store today, one photo a line, oldest first. " * 2
    rows = [f"{n},16:{n % 60:02d}:00,a 64x48 image, mostly {'red' if n in (7, 8) else 'blue'}" for n in range(1, 61)]
    prompt = f"{preface}\nTask: restock the red shelf.\n\n{timeline(rows=rows)}\n"
    schema = answer_schema({"type": "integer", "minimum": 1, "maximum": 60})
    with ollama.Client(fake.url) as client:
        whole = client.generate(LLM, prompt, format=schema, options={"num_ctx": 8192})
        cut = client.generate(LLM, prompt, format=schema, options={"num_ctx": 512})
    assert json.loads(whole.response)["start"]["row"] == 7 and json.loads(whole.response)["end"]["row"] == 8
    # Cut from the front, keeping llama3's num_keep (24, its Modelfile) and the BOS: the task is gone, so the
    # answer is about what is left of the timeline; nothing says so but prompt_eval_count.
    answer, record = json.loads(cut.response), fake.requests[-1]
    assert answer["start"]["row"] > 8 and answer["end"]["row"] == 60  # rows 7 and 8 were cut off
    assert record["truncated"] and record["prompt_tokens"] == whole.prompt_eval_count > 512
    assert cut.prompt_eval_count == expected_cut(512, 24) == 269 and cut.done_reason == "stop"


def test_the_cut_keeps_num_keep_tokens_at_the_front(fake):
    words = " ".join(f"w{n}" for n in range(1, 201))  # two tokens a word
    fake.models.add("qwen2.5:0.5b")
    with ollama.Client(fake.url) as client:
        cut = client.generate("qwen2.5:0.5b", words, options={"num_ctx": 64})
    assert cut.prompt_eval_count == expected_cut(64, 4)  # num_keep 4, the default (api/types.go)
    # <s> <|user|> then three tokens of the prompt, then its tail
    assert cut.response.startswith("You said: w1 w") and cut.response.endswith(" w199 w200")
    assert " w100 " not in cut.response and fake.requests[-1]["truncated"]


def test_chat_drops_the_oldest_messages_that_do_not_fit(fake):
    old = [{"role": "user", "content": "remember the blue box " * 40}, {"role": "assistant", "content": "ok"}]
    with ollama.Client(fake.url) as client:
        answer = client.chat(LLM, [{"role": "system", "content": "be brief"}, *old,
                                   {"role": "user", "content": "what box?"}], options={"num_ctx": 64})
    assert answer.message.content == "You said: what box?" and answer.prompt_eval_count < 64
    assert fake.requests[-1]["truncated"]


def test_an_image_prompt_over_the_window_is_refused(fake):
    images = [solid_jpeg(c) for c in ("red", "green", "blue")]  # 3 x 729 tokens; moondream was trained on 2048
    with ollama.Client(fake.url) as client:
        for stream in (False, True):
            with pytest.raises(ollama.ResponseError) as refused:
                list(client.generate(VLM, "what?", images=images, stream=True)) if stream else \
                    client.generate(VLM, "what?", images=images)
            assert refused.value.status_code == 400  # before any output, streamed or not
            assert "the request exceeds the available context size, try increasing it" in refused.value.error
        assert client.generate(VLM, "what?", images=images[:2]).prompt_eval_count == 2 * 729 + count_tokens(
            "what?") + 4
    assert fake.requests[0]["num_ctx"] == 2048 and fake.requests[0]["prompt_tokens"] > 2048


def test_num_ctx_is_capped_at_the_trained_context_and_vision_gets_2048(fake):
    with ollama.Client(fake.url) as client:
        client.generate(LLM, "x", options={"num_ctx": 100_000})
        client.generate(LLM, "x", options={"num_ctx": 8192})  # the same, capped: no reload
        client.generate(VLM, "x", options={"num_ctx": 512})
        client.generate(LLM, "x")
    assert [r["num_ctx"] for r in fake.requests] == [8192, 8192, 2048, 4096]
    assert fake.loads == 3 and fake.loaded == {LLM: 4096, VLM: 2048}


async def test_another_num_ctx_reloads_the_model_once_it_is_idle():
    with FakeOllama(token_delay=0.05) as fake:
        async with ollama.AsyncClient(fake.url) as client:
            stream = await client.generate(LLM, "a b c d e f", stream=True)
            first = await anext(stream)
            reload = asyncio.create_task(client.generate(LLM, "x", options={"num_ctx": 2048}))
            rest = [part async for part in stream]  # the answer in progress is not cut by the reload
            assert first.response + "".join(p.response for p in rest) == "You said: a b c d e f"
            assert (await reload).response == "You said: x"
            await client.generate(LLM, "y", options={"num_ctx": 2048})
    assert fake.loads == 2 and fake.loaded == {LLM: 2048}


# -- images ----------------------------------------------------------------------------------------------------
def test_a_single_image_model_answers_about_the_last_image(fake):
    fake.models.add("gemma3:4b")
    images = [solid_jpeg("red"), solid_jpeg("blue", (32, 32))]
    with ollama.Client(fake.url) as client:
        moondream = client.generate(VLM, "what?", images=images)
        gemma = client.generate("gemma3:4b", "what?", images=images)
    assert moondream.response == "a 32x32 image, mostly blue"
    assert gemma.response == "a 64x48 image, mostly red; a 32x32 image, mostly blue"
    assert moondream.prompt_eval_count - gemma.prompt_eval_count == 2 * (729 - 256)


def test_a_text_model_drops_images_silently(fake):
    with ollama.Client(fake.url) as client:
        seen = client.chat(LLM, [{"role": "user", "content": "What colour?", "images": [solid_jpeg("red")]}])
        blind = client.chat(LLM, [{"role": "user", "content": "What colour?"}])
        junk = client.generate(LLM, "What colour?", images=[b"not an image"])
        with pytest.raises(ollama.ResponseError) as bad:
            client.generate(VLM, "What colour?", images=[b"not an image"])
    assert seen.message.content == blind.message.content == junk.response == "You said: What colour?"
    assert seen.prompt_eval_count == blind.prompt_eval_count
    assert bad.value.status_code == 400


# -- errors ----------------------------------------------------------------------------------------------------
async def test_an_error_inside_a_stream_comes_after_http_200(fake):
    fake.mode = "stream_error"
    with ollama.Client(fake.url) as client:
        chunks = []
        with pytest.raises(ollama.ResponseError) as crashed:
            for part in client.generate(LLM, "tell me a long story", stream=True):
                chunks.append(part.response)
        assert crashed.value.status_code == -1 and "error was encountered while running the model" in str(
            crashed.value)
        assert chunks == ["You", " said:", " tell"]
        with pytest.raises(ollama.ResponseError) as whole:
            client.generate(LLM, "tell me a long story")
        assert whole.value.status_code == 500  # not streamed: nothing was written, so a real status
    async with ollama.AsyncClient(fake.url) as client:
        with pytest.raises(ollama.ResponseError) as crashed:
            async for part in await client.chat(LLM, [{"role": "user", "content": "go on"}], stream=True):
                assert part.message.content
        assert crashed.value.status_code == -1


def test_modes_error_garbage_and_cut(fake):
    with ollama.Client(fake.url) as client:
        fake.mode = "error"
        with pytest.raises(ollama.ResponseError) as failed:
            client.generate(LLM, "x")
        assert failed.value.status_code == 500
        fake.mode = "garbage"
        with pytest.raises(json.JSONDecodeError):
            client.generate(LLM, "x")
        fake.mode = "cut"
        with pytest.raises(httpx.RemoteProtocolError):
            list(client.generate(LLM, "a b c d", stream=True))
        fake.mode = "ok"
        assert client.generate(LLM, "x").response == "You said: x"
    assert fake.in_flight == 0


def test_an_unknown_model_is_404(fake):
    with ollama.Client(fake.url) as client:
        for call in (lambda: client.generate("nope", "x"), lambda: client.chat("nope", []),
                     lambda: list(client.generate("nope", "x", stream=True))):
            with pytest.raises(ollama.ResponseError) as missing:
                call()
            assert missing.value.status_code == 404 and missing.value.error == "model 'nope' not found"
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("nope")
        assert missing.value.status_code == 404 and missing.value.error == "model 'nope:latest' not found"


# -- JSON schemas ----------------------------------------------------------------------------------------------
def test_a_schema_answer_keeps_what_the_grammar_enforces(fake):
    prompt = f"{timeline()}\n\nTask: restock the red shelf"
    with ollama.Client(fake.url) as client:
        bounded = json.loads(client.generate(LLM, prompt, format=answer_schema(
            {"type": "integer", "minimum": 1, "maximum": 4})).response)
        enum = json.loads(client.generate(LLM, prompt, format=answer_schema(
            {"enum": ["one", "2", "5"]})).response)
        nothing = json.loads(client.generate(LLM, f"{timeline()}\n\nTask: the black box", format=answer_schema(
            {"type": "integer"})).response)
        free = json.loads(client.generate(LLM, prompt, format="json").response)
    assert set(bounded) == {"start", "end", "colour", "reasoning"} and set(bounded["start"]) == {
        "row", "photo", "confidence", "reasoning"}
    # The red rows are 2 and 5, but the grammar allows no row over 4.
    assert bounded["start"]["row"] == RED_ROWS[0] and bounded["end"]["row"] == 4
    assert bounded["start"]["photo"] == "2" and 0 <= bounded["start"]["confidence"] <= 1
    assert bounded["colour"] == "red" and len(bounded["reasoning"]) <= 24
    assert enum["start"]["row"] == "2" and enum["end"]["row"] == "5"
    assert nothing["start"] is None and nothing["end"] is None  # allowed to be null: no row mentions black
    assert free == {"answer": f"You said: {prompt}"}


def test_unbounded_breaks_what_the_grammar_does_not_enforce(fake):
    fake.mode = "unbounded"
    prompt = f"{timeline()}\n\nTask: restock the red shelf"
    with ollama.Client(fake.url) as client:
        answer = json.loads(client.generate(LLM, prompt, format=answer_schema(
            {"type": "integer", "minimum": 1, "maximum": 4})).response)
        fake.mode = "reversed"
        reversed_ = json.loads(client.generate(LLM, prompt, format=answer_schema({"type": "integer"})).response)
    assert answer["start"]["confidence"] == answer["end"]["confidence"] == 1.7  # over its maximum of 1
    assert answer["start"]["photo"] == "photo 2"  # a free string naming no row of the timeline
    assert answer["start"]["row"] == 2 and answer["end"]["row"] == 4 and answer["colour"] == "red"
    assert reversed_["start"]["row"] == 5 and reversed_["end"]["row"] == 2


def test_a_schema_is_filled_by_its_own_names(fake):
    rows = ['"a1","2024-01-01T10:00:00Z","a person walks in"', '"b2","2024-01-01T10:01:00Z","a green crate"',
            '"c3","2024-01-01T10:02:00Z","the green crate, opened"', '"d4","2024-01-01T10:03:00Z","nobody"']
    schema = {"type": "object", "properties": {
        "began": {"type": "object", "properties": {"image_id": {"type": "string"}, "at": {"type": "string"}}},
        "finished_image": {"type": "string"}, "seen": {"type": "boolean"},
        "images": {"type": "array", "items": {"type": "string"}, "maxItems": 5}}}
    with ollama.Client(fake.url) as client:
        answer = json.loads(client.generate(LLM, "\n".join(["When was the green crate opened?", *rows]),
                                            format=schema).response)
    assert answer == {"began": {"image_id": "b2", "at": "2024-01-01T10:01:00Z"}, "finished_image": "c3",
                      "seen": True, "images": ["b2", "c3"]}


# -- models ----------------------------------------------------------------------------------------------------
def test_show_tells_capabilities_and_context(fake):
    with ollama.Client(fake.url) as client:
        vlm, llm = client.show(VLM), client.show("llama3")
        listed = {m.model: m.details.family for m in client.list().models}
    assert vlm.capabilities == ["completion", "vision"] and vlm.modelinfo["phi2.context_length"] == 2048
    assert vlm.details.family == "phi2" and vlm.details.families == ["phi2", "clip"]
    assert llm.capabilities == ["completion"] and llm.modelinfo["general.architecture"] == "llama"
    assert llm.modelinfo["llama.context_length"] == 8192 and "num_keep                       24" in llm.parameters
    assert listed == {VLM: "phi2", LLM: "llama"}


def test_a_failed_pull_says_so_mid_stream():
    with FakeOllama(models={LLM}, pullable=set()) as fake, ollama.Client(fake.url) as client:
        parts = []
        with pytest.raises(ollama.ResponseError) as failed:
            for part in client.pull(VLM, stream=True):
                parts.append(part.status)
        assert parts == ["pulling manifest"] and failed.value.status_code == -1
        assert failed.value.error == "pull model manifest: file does not exist"
        with pytest.raises(ollama.ResponseError) as whole:
            client.pull(VLM)
        assert whole.value.status_code == 500 and VLM not in fake.models


def test_pull_failures_are_served_before_pulls_work():
    with FakeOllama(models={LLM}, pull_failures=["network", "download"]) as fake, ollama.Client(fake.url) as client:
        for expected in ('Get "https://registry.ollama.ai/v2/library/moondream/manifests/1.8b": dial tcp: lookup '
                         'registry.ollama.ai: no such host', "max retries exceeded: "):
            with pytest.raises(ollama.ResponseError) as failed:
                list(client.pull(VLM, stream=True))
            assert expected in failed.value.error and failed.value.status_code == -1
        assert client.pull(VLM).status == "success" and VLM in fake.models
        assert client.generate(VLM, "x", images=[solid_jpeg("white")]).response == "a 64x48 image, mostly white"
    with FakeOllama(models=(), pull_failures=1) as fake, ollama.Client(fake.url) as client:
        with pytest.raises(ollama.ResponseError):
            client.pull("llama3")
        assert client.pull("llama3").status == "success" and fake.models == {LLM}


# -- the server ------------------------------------------------------------------------------------------------
def test_a_restart_keeps_the_port_and_unloads_the_models(fake):
    url = fake.url
    with ollama.Client(url) as client:
        client.generate(LLM, "x")
        fake.stop()
        with pytest.raises(ConnectionError):
            client.generate(LLM, "x")
        fake.start()
        assert fake.url == url and fake.loaded == {}
        assert client.generate(LLM, "x").response == "You said: x"
    assert httpx.get(f"{url}/api/version").json() == {"version": "0.32.15"}
    assert fake.loads == 2


def test_tokens_are_counted_as_a_bpe_tokenizer_roughly_would():
    assert count_tokens("timestamp") == 2  # up to five letters a token
    assert count_tokens("1234567") == 3  # digits in threes
    assert count_tokens("red, blue.") == 4  # a mark is a token
    assert count_tokens("  a   b  ") == 3  # whitespace goes with the next token


def test_the_standalone_server_runs():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "devpeers.fake_ollama", "--port", str(port),
                             "--num-parallel", "2", "--latency", "0", "--token-delay", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("fake Ollama listening on")
        with ollama.Client(f"http://127.0.0.1:{port}") as client:
            assert client.generate(LLM, "x").response == "You said: x"
    finally:
        proc.terminate()
        proc.wait(5)
