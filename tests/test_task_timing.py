"""The decision step of task_timing_v1 (worker/task_timing.py) through the real
engine against the strict fake Ollama: a context window of 4096 tokens, front
truncation, schemas honoured only as far as a grammar enforces them."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import ollama
import pytest

from devpeers.fake_ollama import FakeOllama
from server.engine import OllamaEngine
from server.errors import PeerUnavailable
from server.store import Caption
from worker.captions import Row
from worker.task_timing import decide, parse, schema, task_output

LLM = "llama3:latest"
TASK = "When did the restocking of the red shelf start and end?"
T0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


def rows_of(colours: list[str], *, words: int = 0) -> list[Row]:
    """A timeline, one photo every 10 s; `words` pads each caption as a chatty VLM would."""
    padding = " ".join(["on the shelf beside the aisle"] * (words // 6))
    return [
        Row(Caption(f"img-{n:04d}", T0, f"photo_{n}", T0 + timedelta(seconds=10 * n),
                    f"a 640x480 image, mostly {colour} {padding}".strip()))
        for n, colour in enumerate(colours)
    ]


def planted(total: int, start: int, end: int) -> list[str]:
    return ["red" if start <= n <= end else "grey" for n in range(total)]


@pytest.fixture
def fake():
    with FakeOllama() as server:
        yield server


@pytest.fixture
async def engine(fake):
    async with OllamaEngine(fake.url, vlm_model="moondream:1.8b", llm_model=LLM, llm_num_ctx=4096) as eng:
        yield eng


async def test_a_short_timeline_is_one_question(engine, fake):
    rows = rows_of(["white", "red", "red", "blue", "red", "green"])
    decision = await decide(rows, TASK, engine, LLM)
    task = task_output(decision.verdict, rows)
    assert task["start"]["image_id"] == "img-0001" and task["end"]["image_id"] == "img-0004"
    assert task["start"]["timestamp"] == "2026-03-14T09:00:10Z"
    assert 0 <= task["start"]["confidence"] <= 1
    assert (decision.windows, decision.calls) == (1, 1)
    [request] = fake.requests
    # The task comes after the timeline, so a cut from the front could never lose it.
    assert request["prompt"].rstrip().endswith(f"Prompt: {TASK}")
    assert request["prompt"].index("1,09:00:00,a 640x480 image, mostly white") < request["prompt"].index(TASK)
    assert not request["truncated"] and request["options"]["temperature"] == 0


def test_the_schema_names_rows_as_a_grammar_enforces_them():
    contiguous, scattered = schema([3, 4, 5]), schema([2, 7, 9])
    row = contiguous["properties"]["start"]["properties"]["row"]
    assert row == {"type": "integer", "minimum": 3, "maximum": 5}
    assert scattered["properties"]["end"]["properties"]["row"] == {"type": "integer", "enum": [2, 7, 9]}
    confidence = contiguous["properties"]["start"]["properties"]["confidence"]
    assert confidence == {"type": "integer", "minimum": 0, "maximum": 100}  # integers: bounds the grammar keeps


def test_answers_are_checked_and_repaired():
    moment = {"row": 2, "confidence": 140, "reasoning": "  boxes\n on the shelf "}
    verdict = parse({"start": moment, "end": None, "reasoning": "r"}, {1, 2, 3})
    assert verdict.start.confidence == 1.0 and verdict.start.reasoning == "boxes on the shelf"
    for answer, why in (
        ({"start": {**moment, "row": 9}, "end": None}, "is not one of the rows"),
        ({"start": {**moment, "row": "2"}, "end": None}, "is not one of the rows"),
        ({"start": {**moment, "row": 3}, "end": {**moment, "row": 1}}, "end comes before the start"),
        ({"start": [], "end": None}, "start is not an object"),
        ([], "not a JSON object"),
    ):
        with pytest.raises(PeerUnavailable, match=why):
            parse(answer, {1, 2, 3})


async def test_grammar_bounds_hold_where_a_model_breaks_the_others(engine, fake):
    fake.mode = "unbounded"  # numbers outside their minimum/maximum, free strings naming nothing
    rows = rows_of(["white", "red", "red", "blue"])
    task = task_output((await decide(rows, TASK, engine, LLM)).verdict, rows)
    assert task["start"]["image_id"] == "img-0001" and task["end"]["image_id"] == "img-0002"
    assert 0 <= task["start"]["confidence"] <= 1


async def test_an_answer_that_ends_before_it_starts_is_asked_again_then_fails(engine, fake):
    fake.mode = "reversed"
    with pytest.raises(PeerUnavailable) as failed:
        await decide(rows_of(["white", "red", "red", "blue"]), TASK, engine, LLM)
    assert failed.value.code == "bad_model_answer" and "end comes before the start" in failed.value.message
    assert len(fake.requests) == 3  # asked three times; nothing else was redone


async def test_a_task_that_never_happens_has_no_start_or_end(engine):
    rows = rows_of(["white", "blue", "grey"])
    task = task_output((await decide(rows, TASK, engine, LLM)).verdict, rows)
    assert task["start"] is None and task["end"] is None


async def test_a_timeline_over_the_context_is_read_in_windows_and_the_task_is_found(engine, fake):
    rows = rows_of(planted(400, 230, 262))
    decision = await decide(rows, TASK, engine, LLM)
    task = task_output(decision.verdict, rows)
    assert task["start"]["image_id"] == "img-0230" and task["end"]["image_id"] == "img-0262"
    assert decision.windows > 1 and decision.calls == decision.windows + 1
    # No prompt was cut: each fitted the window it asked for, with room for its answer.
    assert all(not r["truncated"] and r["prompt_eval_count"] < r["num_ctx"] for r in fake.requests)
    assert {r["num_ctx"] for r in fake.requests} == {4096}


async def test_the_same_timeline_in_one_prompt_would_have_lost_the_task(fake):
    """What the node used to do: instructions and task first, then the whole timeline, not streamed."""
    rows = rows_of(planted(400, 230, 262))
    lines = "\n".join(f"{r.image_id},{r.timestamp},{r.caption.caption}" for r in rows)
    async with ollama.AsyncClient(fake.url) as client:
        answer = await client.generate(LLM, f"Task: {TASK}\n\nid,timestamp,event\n{lines}\n", stream=False,
                                       format=schema([1, 400]))
    [request] = fake.requests
    assert request["truncated"] and request["num_ctx"] == 4096  # Ollama's default: no num_ctx was asked
    start = json.loads(answer.response)["start"]
    assert start is None or start["row"] != 231  # silently wrong


async def test_a_prompt_longer_than_estimated_is_caught_and_read_again_in_smaller_windows(engine, fake):
    """Captions that take far more tokens than bytes suggest (a run of dashes is a token each here)."""
    rows = rows_of(planted(120, 60, 70))
    rows = [Row(dataclasses.replace(r.caption, caption=r.caption.caption + " " + "-" * 60)) for r in rows]
    decision = await decide(rows, TASK, engine, LLM)
    task = task_output(decision.verdict, rows)
    assert task["start"]["image_id"] == "img-0060" and task["end"]["image_id"] == "img-0070"
    cut = [r for r in fake.requests if r["truncated"]]
    assert cut, "the first estimate should have been too kind"
    # The answer to a cut prompt was not believed: the last questions were all read whole.
    assert not fake.requests[-1]["truncated"]


async def test_tasks_under_way_at_either_end_of_a_long_timeline(engine):
    for start, end in ((0, 40), (360, 399)):
        rows = rows_of(planted(400, start, end))
        task = task_output((await decide(rows, TASK, engine, LLM)).verdict, rows)
        assert (task["start"]["image_id"], task["end"]["image_id"]) == (f"img-{start:04d}", f"img-{end:04d}")


async def test_a_task_longer_than_the_context_is_refused_clearly(engine, fake):
    from server.errors import BadInput

    with pytest.raises(BadInput) as refused:
        await decide(rows_of(["red"] * 3), "red? " * 2000, engine, LLM)
    assert refused.value.code == "prompt_too_long" and "task is too long" in refused.value.message
    assert not fake.requests
