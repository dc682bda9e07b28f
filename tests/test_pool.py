"""Many model servers for one role (server/pool.py), against fake
OpenAI-compatible servers and fake Ollamas over real sockets: requests spread
by load for the slots, a failing server taken out, its work moved, probed back;
a realtime stream kept on one server; every server checked at start."""

import asyncio
import contextlib

import pytest
from prometheus_client import REGISTRY

from devpeers.fake_ollama import FakeOllama
from devpeers.fake_openai import FakeOpenAI, ServedModel
from devpeers.images import solid_jpeg
from server.config import Settings
from server.errors import BadInput, PeerRefused, PeerUnavailable
from server.peers import engines
from server.retry import RetryStrategy
from tests.fixtures import wait_for

VLM = "Qwen/Qwen2.5-VL-3B-Instruct"
LLM = "Qwen/Qwen2.5-1.5B-Instruct"
QUICK_PROBE = RetryStrategy(wait=0.05, max_wait=0.2)


def on(servers: list[FakeOpenAI], **kw) -> Settings:
    urls = ",".join(s.url for s in servers)
    return Settings(vlm_backend="openai", vlm_base_url=urls, vlm_model=VLM,
                    llm_backend="openai", llm_base_url=urls, llm_model=LLM, **kw)


@contextlib.asynccontextmanager
async def pools(settings: Settings):
    built = engines(settings)
    for p in built.distinct:
        p.probe = QUICK_PROBE
    try:
        yield built
    finally:
        await built.aclose()


def up(role: str, server: FakeOpenAI) -> float | None:
    return REGISTRY.get_sample_value("vlmnode_model_server_up", {"role": role, "server": server.url})


def taken_out(role: str, server: FakeOpenAI) -> float:
    return REGISTRY.get_sample_value("vlmnode_model_server_taken_out_total", {"role": role, "server": server.url}) or 0


async def answer(engine, text: str = "hello there", **options) -> str:
    return "".join([c.text async for c in engine.stream(text, options={"num_predict": 8, **options})])


@pytest.fixture
def two():
    with FakeOpenAI(slots=2, token_delay=0.05) as a, FakeOpenAI(slots=2, token_delay=0.05) as b:
        yield a, b


async def test_requests_go_to_the_server_with_the_fewest_in_flight(two):
    a, b = two
    async with pools(on([a, b], vlm_slots=2)) as built:
        answers = await asyncio.gather(*(answer(built.vlm) for _ in range(4)))
    assert answers == ["You said: hello there"] * 4
    # Four at once over two servers of two slots: two each, none queued behind a full server.
    assert (len(a.requests), len(b.requests)) == (2, 2) and a.max_in_flight == b.max_in_flight == 2
    assert a.waiting == b.waiting == 0


async def test_load_is_reckoned_against_each_servers_slots():
    """A server of four slots beside one of one takes four of five at once."""
    with FakeOpenAI(slots=4, token_delay=0.05) as big, FakeOpenAI(slots=1, token_delay=0.05) as small:
        async with pools(on([big, small])) as built:
            vlm = built.vlm
            vlm.servers[1].slots = 1  # VLM_SLOTS is one figure for all; a pool may hold servers of different sizes
            await asyncio.gather(*(answer(vlm) for _ in range(5)))
    assert (len(big.requests), len(small.requests)) == (4, 1)


async def test_in_turn_when_idle(two):
    a, b = two
    async with pools(on([a, b])) as built:
        for _ in range(4):
            await answer(built.vlm)
    assert (len(a.requests), len(b.requests)) == (2, 2)


async def test_a_server_that_fails_is_taken_out_its_work_moved_and_it_is_probed_back(two):
    a, b = two
    async with pools(on([a, b])) as built:
        vlm = built.vlm
        before = taken_out("VLM", a)
        a.stop()
        captions = await asyncio.gather(*(vlm.caption(solid_jpeg("red"), "what?") for _ in range(4)))
        assert captions == ["a 64x48 image, mostly red"] * 4  # every one answered, by b
        assert len(b.requests) == 4 and up("VLM", a) == 0 and up("VLM", b) == 1
        assert taken_out("VLM", a) == before + 1  # once, however many requests found it down
        assert [s.out for s in vlm.servers][0].startswith("the VLM's OpenAI-compatible server is not reachable")
        a.start()
        await wait_for(lambda: up("VLM", a) == 1, timeout=5)
        assert not vlm.servers[0].out
        await asyncio.gather(*(answer(vlm) for _ in range(2)))
        assert len(a.requests) >= 1  # back in the turn


async def test_a_stream_cut_before_any_text_moves(two):
    """vLLM's first chunk carries only the role: a connection cut after it has given the caller nothing."""
    a, b = two
    a.mode = "cut"
    before = taken_out("VLM", a)
    async with pools(on([a, b])) as built:
        assert await answer(built.vlm) == "You said: hello there"
        assert len(a.requests) == len(b.requests) == 1 and taken_out("VLM", a) == before + 1


async def test_a_server_failing_with_500s_is_taken_out_as_an_unreachable_one_is(two):
    a, b = two
    a.mode = "error"
    async with pools(on([a, b])) as built:
        assert await answer(built.vlm) == "You said: hello there"
        assert built.vlm.servers[0].out.endswith("(HTTP 500)")
        a.mode = "ok"
        await wait_for(lambda: not built.vlm.servers[0].out, timeout=5)


async def test_a_stream_failing_after_it_began_is_not_moved_but_a_caption_is(two):
    """A caller that has part of an answer cannot have it taken back: the
    stream fails; a caption, whole or nothing to its caller, moves."""
    a, b = two
    a.mode = "stream_error"
    before = taken_out("VLM", a)
    async with pools(on([a, b])) as built:  # each pool's first request goes to its first server
        with pytest.raises(PeerUnavailable, match="failed mid-answer"):
            await answer(built.vlm)
        assert not b.requests and taken_out("VLM", a) == before + 1
    async with pools(on([a, b])) as built:
        assert await built.vlm.caption(solid_jpeg("blue"), "what?") == "a 64x48 image, mostly blue"
        assert len(b.requests) == 1 and taken_out("VLM", a) == before + 2


async def test_a_refusal_of_the_request_is_not_moved_and_takes_no_server_out(two):
    a, b = two
    async with pools(on([a, b], vlm_num_ctx=64)) as built:
        with pytest.raises(BadInput) as info:
            await answer(built.vlm, "word " * 200, num_predict=4)
        assert info.value.code == "prompt_too_long"
        assert not any(s.out for s in built.vlm.servers) and not a.requests and not b.requests


async def test_a_failure_everywhere_is_the_servers_own_and_moves_once(two):
    a, b = two
    with FakeOpenAI() as c:
        for server in (a, b, c):
            server.mode = "error"
        async with pools(on([a, b, c])) as built:
            with pytest.raises(PeerUnavailable, match=r"failed: EngineCore encountered an issue.*\(HTTP 500\)"):
                await built.vlm.caption(solid_jpeg("red"), "what?")
            # Tried on two: a request that fails everywhere takes out no more than that.
            assert sum(bool(s.out) for s in built.vlm.servers) == 2
            for server in (a, b, c):
                server.mode = "ok"
            assert await answer(built.vlm) == "You said: hello there"  # from the one left in


async def test_with_every_server_out_requests_still_go_and_the_first_answer_brings_one_back(two):
    a, b = two
    async with pools(on([a, b])) as built:
        built.vlm.probe = RetryStrategy(wait=60)  # no probe comes to the rescue here
        a.stop()
        b.stop()
        with pytest.raises(PeerUnavailable, match="not reachable"):
            await answer(built.vlm)
        assert all(s.out for s in built.vlm.servers)
        b.start()
        assert await answer(built.vlm) == "You said: hello there"
        await built.vlm.ready()
        assert [bool(s.out) for s in built.vlm.servers] == [True, False]


async def test_a_pinned_stream_keeps_to_its_server_and_moves_when_it_fails(two):
    a, b = two
    async with pools(on([a, b])) as built:
        first, second = built.vlm.pinned(), built.vlm.pinned()
        for _ in range(3):
            await answer(first)
            await answer(second)
        assert first.server is not second.server  # the two streams spread, each on one
        assert (len(a.requests), len(b.requests)) == (3, 3)
        home = first.server
        gone = a if home is built.vlm.servers[0] else b
        gone.stop()
        assert await answer(first) == "You said: hello there"  # moved before its first chunk
        assert first.server is not home
        await answer(first)
        assert first.server is not home


async def test_ready_says_each_server_and_holds_while_one_answers(two):
    a, b = two
    async with pools(on([a, b])) as built:
        await built.ready()
        b.stop()
        await built.ready()  # the node can still work
        assert [bool(s.out) for s in built.vlm.servers] == [False, True] and up("VLM", b) == 0
        a.stop()
        with pytest.raises(PeerUnavailable, match=r"none of the VLM's 2 servers answers \(http://127.0.0.1:\d+/v1: "):
            await built.vlm.ready()


async def test_the_check_at_start_takes_out_a_missing_server_but_refuses_a_text_only_vlm_on_any(two):
    a, b = two
    b.stop()
    async with pools(on([a, b])) as built:
        assert await built.check_models() == []
        assert [bool(s.out) for s in built.vlm.servers] == [False, True]
    with FakeOpenAI([ServedModel(VLM, max_images=0), LLM], flavour="llama.cpp") as text_only:
        async with pools(on([a, text_only])) as built:
            with pytest.raises(PeerRefused, match=f"VLM_MODEL {VLM} cannot see images") as info:
                await built.vlm.check_models()
            assert info.value.code == "model_unsuitable"


async def test_a_replica_without_the_model_is_taken_out(two):
    a, b = two
    with FakeOpenAI([LLM]) as wrong:
        async with pools(on([wrong, a])) as built:
            await built.vlm.check_models()
            assert built.vlm.servers[0].out.startswith(f"model '{VLM}' is not served")
            assert await built.vlm.caption(solid_jpeg("red"), "what?") == "a 64x48 image, mostly red"


async def test_several_ollamas_serve_both_roles_as_one_pool(fake_ollama):
    with FakeOllama() as second:
        urls = f"{fake_ollama.url},{second.url}"
        built = engines(Settings(vlm_base_url=urls, llm_base_url=urls))
        try:
            assert built.vlm is built.llm and built.vlm.role == "VLM+LLM"
            await built.check_models()
            captions = await asyncio.gather(*(built.vlm.caption(solid_jpeg("red"), "what?") for _ in range(2)))
            assert captions == ["a 64x48 image, mostly red"] * 2
            assert [len([r for r in s.requests if r["images"]]) for s in (fake_ollama, second)] == [1, 1]
        finally:
            await built.aclose()


async def test_the_servers_share_what_they_learn_of_the_models_tokens(two):
    a, b = two
    async with pools(on([a, b])) as built:
        for _ in range(2):
            await answer(built.vlm, "count these words please")
        [estimator] = built.vlm.tokens.values()
        assert all(s.engine.tokens is built.vlm.tokens for s in built.vlm.servers)
        assert estimator is built.vlm.servers[0].engine.tokens[VLM]

