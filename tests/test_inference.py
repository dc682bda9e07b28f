"""InferenceService.Infer over a real channel, with the async generated stub,
against the fake Ollama."""

import asyncio
import base64
import dataclasses

import grpc
import pytest
from google.protobuf import text_format

from devpeers.images import solid_jpeg
from server.grpc_server import NodeServer
from server.realtime import NO_PROMPT, TILED, RealtimeLimits
from tests.fixtures import wait_for
from vlmnode.v1 import inference_pb2, inference_pb2_grpc

pb = inference_pb2
MAX_BAD_FRAMES = RealtimeLimits.max_bad_frames


@pytest.fixture
async def infer_node(settings):
    """Starts a node with some settings changed; yields an Infer stub maker."""
    started: list[tuple[NodeServer, grpc.aio.Channel]] = []

    async def start(**overrides) -> inference_pb2_grpc.InferenceServiceStub:
        node = NodeServer(dataclasses.replace(settings, **overrides))
        await node.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{node.port}")
        started.append((node, channel))
        return inference_pb2_grpc.InferenceServiceStub(channel)

    yield start
    for node, channel in started:
        await channel.close()
        await node.stop(grace=0.5)


def config(**kw) -> pb.InferRequest:
    return pb.InferRequest(config=pb.StreamConfig(**kw))


def frame(colour: str, frame_id: str = "", size=(64, 48)) -> pb.InferRequest:
    return pb.InferRequest(frame=pb.Frame(id=frame_id or colour, image=solid_jpeg(colour, size=size)))


def prompt(text: str) -> pb.InferRequest:
    return pb.InferRequest(prompt=pb.Prompt(text=text))


async def read_answer(call) -> tuple[str, pb.AnswerChunk]:
    """Reads one whole answer; returns its text and last chunk."""
    text = ""
    while True:
        response = await call.read()
        assert response is not grpc.aio.EOF, "stream ended before the answer did"
        assert response.WhichOneof("message") == "chunk", response
        text += response.chunk.text
        if response.chunk.done:
            return text, response.chunk


async def expect_status(call, code: grpc.StatusCode, match: str):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()


async def test_a_batch_reaches_a_one_image_model_as_one_contact_sheet(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colours?", batch_size=2))
    await call.write(frame("red"))
    await call.write(frame("blue"))
    text, last = await read_answer(call)
    # moondream sees one image: the two frames side by side, not the last one alone.
    assert text.startswith("a 128x48 image")
    assert list(last.frame_ids) == ["red", "blue"] and last.answer_id == 1 and last.frames_dropped == 0
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["images"] == 1 and request["model"] == "moondream:1.8b"
    assert request["prompt"] == TILED.format(n=2) + "What colours?"
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_a_model_that_sees_several_images_gets_the_whole_batch(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colours?", batch_size=2, model="gemma3:4b"))
    await call.write(frame("red"))
    await call.write(frame("blue"))
    text, last = await read_answer(call)
    assert text == "a 64x48 image, mostly red; a 64x48 image, mostly blue"
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["images"] == 2 and request["prompt"] == "What colours?"
    call.cancel()


async def test_a_stream_on_an_openai_server_takes_one_image_unless_told_more(infer_node, fake_openai):
    # Such a server does not say how many images its model was trained on: one, unless VLM_MAX_IMAGES says more.
    on_openai = dict(vlm_backend="openai", vlm_base_url=fake_openai.url, vlm_model="Qwen/Qwen2.5-VL-3B-Instruct")
    for overrides, answer, images in (
        ({}, "a 128x48 image, mostly red", 1),
        ({"vlm_max_images": 2}, "a 64x48 image, mostly red; a 64x48 image, mostly blue", 2),
    ):
        stub = await infer_node(**on_openai, **overrides)
        call = stub.Infer()
        await call.write(config(prompt="What colours?", batch_size=2))
        await call.write(frame("red"))
        await call.write(frame("blue"))
        text, last = await read_answer(call)
        assert text == answer and list(last.frame_ids) == ["red", "blue"] and last.done_reason == "stop"
        assert last.model == "Qwen/Qwen2.5-VL-3B-Instruct" and last.metrics.eval_count > 0
        assert fake_openai.requests[-1]["images"] == images
        call.cancel()


async def test_a_stream_keeps_to_one_of_several_servers_and_moves_when_it_stops(infer_node):
    """VLM_BASE_URL listing two servers: each stream's batches go to one of
    them (two streams, one each), and to the other once its own stops."""
    from devpeers.fake_openai import FakeOpenAI

    with FakeOpenAI() as a, FakeOpenAI() as b:
        stub = await infer_node(vlm_backend="openai", vlm_base_url=f"{a.url},{b.url}",
                                vlm_model="Qwen/Qwen2.5-VL-3B-Instruct")
        streams = {"red": stub.Infer(), "blue": stub.Infer()}  # each sends frames of its colour
        for call in streams.values():
            await call.write(config(prompt="What colour?", batch_size=1))

        async def answered(colour: str) -> None:
            await streams[colour].write(frame(colour))
            text, _ = await read_answer(streams[colour])
            assert text == f"a 64x48 image, mostly {colour}"

        def colours(server: FakeOpenAI) -> set[str]:
            return {"red" if r["image_urls"][0] == red else "blue" for r in server.requests}

        red = "data:image/jpeg;base64," + base64.b64encode(solid_jpeg("red")).decode()
        for colour in ("red", "red", "blue") * 3:  # taken in turn, the servers would each see both colours
            await answered(colour)
        assert (len(a.requests), colours(a), len(b.requests), colours(b)) == (6, {"red"}, 3, {"blue"})
        a.stop()
        for colour in ("red", "blue", "red"):
            await answered(colour)
        assert (len(b.requests), colours(b)) == (6, {"red", "blue"})
        for call in streams.values():
            call.cancel()


async def test_the_newest_frame_policy_answers_about_the_last_frame(infer_node, fake_ollama):
    stub = await infer_node(realtime_single_image="newest")
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=3))
    for colour in ("red", "green", "blue"):
        await call.write(frame(colour))
    text, last = await read_answer(call)
    assert text == "a 64x48 image, mostly blue" and list(last.frame_ids) == ["blue"]
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["images"] == 1 and request["prompt"] == "What colour?"
    call.cancel()


async def test_a_model_that_cannot_see_is_refused(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=1, model="llama3:latest"))
    await call.write(frame("red"))
    await expect_status(call, grpc.StatusCode.FAILED_PRECONDITION, "'llama3:latest' cannot see images")
    assert not [r for r in fake_ollama.requests if r["images"]]


async def test_answers_stream_in_chunks(infer_node, fake_ollama):
    fake_ollama.token_delay = 0.02  # a token at a time, as a model writes them
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=1))
    await call.write(frame("green"))
    chunks = []
    while not chunks or not chunks[-1].done:
        chunks.append((await call.read()).chunk)
    assert len(chunks) > 2 and all(not c.done for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == "a 64x48 image, mostly green"
    call.cancel()


async def test_num_predict_and_model_reach_ollama(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="Describe", batch_size=1, num_predict=2, temperature=0.1, model="gemma3:4b"))
    await call.write(frame("red"))
    text, _ = await read_answer(call)
    assert len(text.split()) == 2
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["options"]["num_predict"] == 2 and request["model"] == "gemma3:4b"
    assert request["options"]["temperature"] == pytest.approx(0.1)
    call.cancel()


async def test_a_new_prompt_flushes_queued_frames(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(batch_size=3, flush_after_seconds=-1))
    await call.write(frame("yellow"))
    await call.write(prompt("And now?"))
    text, last = await read_answer(call)
    assert list(last.frame_ids) == ["yellow"] and "yellow" in text
    [request] = [r for r in fake_ollama.requests if r["images"]]
    assert request["prompt"] == "And now?"
    call.cancel()


async def test_frames_before_any_prompt_are_answered_when_it_comes(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(batch_size=2))
    await call.write(frame("red"))
    await call.write(frame("green"))
    # The batch is full: said, as the original said it, for each frame from here on.
    assert (await call.read()).notice == pb.Notice(message=NO_PROMPT, frame_ids=["red", "green"])
    await call.write(frame("blue"))  # the newest batch is kept
    assert (await call.read()).notice == pb.Notice(message=NO_PROMPT, frame_ids=["green", "blue"])
    await call.write(prompt("What colour?"))
    text, last = await read_answer(call)
    assert list(last.frame_ids) == ["green", "blue"] and last.frames_dropped == 1
    assert text == "a 128x48 image, mostly green"  # one contact sheet: moondream answers about its last tile
    await call.write(frame("white"))
    await call.write(frame("yellow"))
    _, last = await read_answer(call)
    assert list(last.frame_ids) == ["white", "yellow"]
    assert [r["prompt"] for r in fake_ollama.requests if r["images"]] == [TILED.format(n=2) + "What colour?"] * 2
    call.cancel()


async def test_a_flush_without_a_prompt_is_said_and_keeps_the_frames(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(batch_size=3, flush_after_seconds=0.01))
    await call.write(frame("yellow"))
    await call.write(pb.InferRequest(flush=pb.Flush()))  # nothing to answer it with: said, and kept
    assert (await call.read()).notice == pb.Notice(message=NO_PROMPT, frame_ids=["yellow"])
    await call.write(prompt("What colour?"))
    _, last = await read_answer(call)
    assert list(last.frame_ids) == ["yellow"]
    await call.write(prompt(""))  # no prompt again
    await call.write(frame("white"))
    await call.done_writing()  # the stream ends without an answer for it
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert len([r for r in fake_ollama.requests if r["images"]]) == 1


async def test_a_bad_frame_is_a_notice_and_the_stream_goes_on(infer_node, fake_ollama):
    stub = await infer_node(realtime_max_frame_bytes=100_000)
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=1))
    refused = [
        (pb.Frame(id="x", image=b"hello"), pb.Notice(message="frame x: not an image", frame_ids=["x"])),
        (pb.Frame(id="e"), pb.Notice(message="frame e: empty image", frame_ids=["e"])),
        (pb.Frame(id="big", image=b"\xff\xd8\xff" + bytes(120_000)),
         pb.Notice(message="frame big: 120003 bytes, over the limit of 100000", frame_ids=["big"],
                   code="RESOURCE_EXHAUSTED")),
        (pb.Frame(id="i" * 201, image=solid_jpeg("red")), pb.Notice(message="frame id is longer than 200 characters")),
    ]
    for bad, notice in refused:
        await call.write(pb.InferRequest(frame=bad))
        notice.code = notice.code or "INVALID_ARGUMENT"
        assert (await call.read()).notice == notice
    await call.write(frame("red"))
    text, last = await read_answer(call)
    assert text == "a 64x48 image, mostly red" and list(last.frame_ids) == ["red"] and last.frames_dropped == 0
    await call.write(pb.InferRequest(frame=pb.Frame(image=b"junk")))  # no id: named by its place in the stream
    assert (await call.read()).notice == pb.Notice(
        message="frame 6: not an image", frame_ids=["frame-6"], code="INVALID_ARGUMENT"
    )
    await call.write(pb.InferRequest(frame=pb.Frame(image=solid_jpeg("blue"))))
    text, last = await read_answer(call)
    assert text == "a 64x48 image, mostly blue" and list(last.frame_ids) == ["frame-7"]
    assert len([r for r in fake_ollama.requests if r["images"]]) == 2
    call.cancel()


async def test_bad_frames_in_a_row_end_the_stream(infer_node, fake_ollama):
    stub = await infer_node(realtime_max_frame_bytes=100_000)
    bad = pb.InferRequest(frame=pb.Frame(id="x", image=b"hello"))
    big = pb.InferRequest(frame=pb.Frame(id="big", image=b"\xff\xd8\xff" + bytes(120_000)))
    for last, code in ((bad, grpc.StatusCode.INVALID_ARGUMENT), (big, grpc.StatusCode.RESOURCE_EXHAUSTED)):
        call = stub.Infer()
        await call.write(config(prompt="What colour?", batch_size=1))
        # A good frame between them starts the count again.
        for request in [bad] * (MAX_BAD_FRAMES - 1) + [frame("red")] + [bad] * (MAX_BAD_FRAMES - 1) + [last]:
            await call.write(request)
        await call.done_writing()
        responses = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while (response := await call.read()) is not grpc.aio.EOF:
                responses.append(response)
        assert ended.value.code() == code
        message = f"{'frame x: not an image' if last is bad else 'frame big: 120003 bytes, over the limit of 100000'}"
        assert ended.value.details() == f"{message} ({MAX_BAD_FRAMES} bad frames in a row end the stream)"
        notices = [r.notice for r in responses if r.WhichOneof("message") == "notice"]
        assert [n.code for n in notices] == ["INVALID_ARGUMENT"] * (2 * MAX_BAD_FRAMES - 2)
        assert responses[-1].error == pb.StreamError(code=code.name, message=ended.value.details())


async def test_quiet_spell_flushes_a_partial_batch(infer_node):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=5, flush_after_seconds=0.2))
    await call.write(frame("blue"))
    _, last = await asyncio.wait_for(read_answer(call), 5)
    assert list(last.frame_ids) == ["blue"]
    call.cancel()


async def test_explicit_flush_and_closing_answer_what_is_queued(infer_node):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=5, flush_after_seconds=-1))
    await call.write(frame("red"))
    await call.write(pb.InferRequest(flush=pb.Flush()))
    _, first = await read_answer(call)
    await call.write(frame("green"))
    await call.done_writing()
    _, second = await read_answer(call)
    assert list(first.frame_ids) == ["red"] and list(second.frame_ids) == ["green"]
    assert await call.read() is grpc.aio.EOF


async def test_a_busy_model_keeps_only_the_newest_frames(infer_node, fake_ollama):
    fake_ollama.latency = 0.5
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=1))
    await call.write(frame("red", "f1"))
    while fake_ollama.in_flight == 0:
        await asyncio.sleep(0.01)
    for n, colour in enumerate(["green", "blue", "yellow", "white"], start=2):
        await call.write(frame(colour, f"f{n}"))
    _, first = await read_answer(call)
    text, second = await read_answer(call)
    assert list(first.frame_ids) == ["f1"]
    assert list(second.frame_ids) == ["f5"] and "white" in text
    assert second.frames_dropped == 3
    assert len([r for r in fake_ollama.requests if r["images"]]) == 2
    call.cancel()


async def test_cancelling_the_stream_cancels_the_model_request(infer_node, fake_ollama):
    fake_ollama.token_delay = 0.2
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=1))
    await call.write(frame("red"))
    first = await call.read()
    assert first.chunk.text and not first.chunk.done
    call.cancel()
    await wait_for(lambda: fake_ollama.cancelled, timeout=2)
    assert fake_ollama.cancelled == 1 and fake_ollama.in_flight == 0


async def test_limits_and_bad_input(infer_node):
    stub = await infer_node(realtime_max_frame_bytes=100_000, realtime_idle_timeout=0.3)
    big = pb.InferRequest(frame=pb.Frame(id="big", image=b"\xff\xd8\xff" + bytes(120_000)))
    huge = pb.InferRequest(frame=pb.Frame(id="huge", image=bytes(1_000_000)))
    cases = [
        ([frame("red")], grpc.StatusCode.INVALID_ARGUMENT, "first message of a stream must be its config"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "first message of a stream must be its config"),
        ([config(batch_size=99)], grpc.StatusCode.INVALID_ARGUMENT, "batch_size must be between 1 and 16"),
        ([config(batch_size=-1)], grpc.StatusCode.INVALID_ARGUMENT, "batch_size"),
        ([config(num_predict=-3)], grpc.StatusCode.INVALID_ARGUMENT, "num_predict"),
        ([config(temperature=9)], grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ([config(prompt="x" * 9000)], grpc.StatusCode.INVALID_ARGUMENT, "prompt is longer"),
        ([config(), config()], grpc.StatusCode.INVALID_ARGUMENT, "one config"),
        ([config(), *[pb.InferRequest(frame=pb.Frame(id="x", image=b"hello"))] * MAX_BAD_FRAMES],
         grpc.StatusCode.INVALID_ARGUMENT, "frame x: not an image (5 bad frames in a row end the stream)"),
        ([config(), *[pb.InferRequest(frame=pb.Frame(id="e"))] * MAX_BAD_FRAMES], grpc.StatusCode.INVALID_ARGUMENT,
         "empty image"),
        ([config(), *[big] * MAX_BAD_FRAMES], grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit of 100000"),
        ([config(), huge], grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),  # gRPC's own message limit
        ([config(), prompt("y" * 9000)], grpc.StatusCode.INVALID_ARGUMENT, "prompt is longer"),
    ]
    for messages, code, match in cases:
        call = stub.Infer()
        for message in messages:
            await call.write(message)
        await call.done_writing()
        await expect_status(call, code, match)
    idle = stub.Infer()
    await idle.write(config(prompt="hi"))
    await expect_status(idle, grpc.StatusCode.DEADLINE_EXCEEDED, "no message for 0.3 s")


async def test_ollama_down_and_model_missing(infer_node, fake_ollama):
    stub = await infer_node()
    missing = stub.Infer()
    await missing.write(config(prompt="hi", batch_size=1, model="nosuchmodel:7b"))
    await missing.write(frame("red"))
    await expect_status(missing, grpc.StatusCode.FAILED_PRECONDITION, "nosuchmodel")
    fake_ollama.stop()
    down = stub.Infer()
    await down.write(config(prompt="hi", batch_size=1))
    for n in range(3):  # two failed answers are said; the third in a row ends the stream
        await down.write(frame("red", f"f{n}"))
        if n < 2:
            notice = (await down.read()).notice
            assert notice.message.startswith("no answer for these frames: Ollama is not reachable")
            assert list(notice.frame_ids) == [f"f{n}"]
    await expect_status(down, grpc.StatusCode.UNAVAILABLE, "Ollama is not reachable")


async def test_a_failed_answer_is_a_notice_and_the_stream_goes_on(infer_node, fake_ollama):
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=1))
    fake_ollama.mode = "error"
    await call.write(frame("red"))
    notice = (await call.read()).notice
    assert "no answer for these frames" in notice.message and list(notice.frame_ids) == ["red"]
    fake_ollama.mode = "ok"
    await call.write(frame("blue"))
    text, last = await read_answer(call)
    assert text == "a 64x48 image, mostly blue" and list(last.frame_ids) == ["blue"]
    call.cancel()


async def test_chunks_carry_what_ollama_said_of_them(infer_node, fake_ollama):
    fake_ollama.token_delay = 0.01  # a token at a time
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colour?", batch_size=1, num_predict=3))
    await call.write(frame("green"))
    chunks = []
    while not chunks or not chunks[-1].done:
        chunks.append((await call.read()).chunk)
    call.cancel()
    assert len(chunks) > 2 and {c.model for c in chunks} == {"moondream:1.8b"}
    times = [c.created_at.ToDatetime() for c in chunks]
    assert times == sorted(times) and times[0].year > 2000
    last = chunks[-1]
    assert last.done_reason == "length" and last.metrics.eval_count == 3 and last.metrics.prompt_eval_count > 0
    assert last.metrics.total_duration.ToNanoseconds() >= last.metrics.eval_duration.ToNanoseconds() > 0
    assert not any(c.done_reason or c.HasField("metrics") for c in chunks[:-1])


def schema_before_ollama_fields():
    """InferResponse as a client generated before AnswerChunk had model,
    created_at, done_reason and metrics, and Notice its code."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    last_field = {"AnswerChunk": 5, "Notice": 2}
    messages = [m for m in file.message_type if m.name != "AnswerMetrics"]
    for message in messages:
        fields = [f for f in message.field if f.number <= last_field.get(message.name, 99)]
        del message.field[:]
        message.field.extend(fields)
    del file.message_type[:]
    file.message_type.extend(messages)
    file.dependency.remove("google/protobuf/duration.proto")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("vlmnode.v1.InferResponse"))


async def test_an_old_client_sees_a_good_stream_as_before(infer_node):
    old_response = schema_before_ollama_fields()
    stub = await infer_node()
    call = stub.Infer()
    await call.write(config(prompt="What colours?", batch_size=2))
    for colour in ("red", "blue", "green", "white"):
        await call.write(frame(colour))
    await call.done_writing()
    responses = []
    while (response := await call.read()) is not grpc.aio.EOF:
        responses.append(response)
    assert await call.code() == grpc.StatusCode.OK
    assert {r.WhichOneof("message") for r in responses} == {"chunk"}  # answers only, as before
    for response in responses:
        as_before = pb.InferResponse()
        as_before.CopyFrom(response)
        for added in ("model", "created_at", "done_reason", "metrics"):
            as_before.chunk.ClearField(added)
        old = old_response.FromString(response.SerializeToString())
        assert text_format.MessageToString(old) == text_format.MessageToString(as_before)
    done = [r.chunk for r in responses if r.chunk.done]
    assert [(c.answer_id, list(c.frame_ids), c.frames_dropped) for c in done] == [
        (1, ["red", "blue"], 0), (2, ["green", "white"], 0)
    ]
