"""How task_timing_v1 answers the user's prompt over the captioned timeline,
and decides when the task it is about started and ended.

The LLM reads the timeline with its rows numbered, and answers in a JSON
schema: the prompt answered in words (`temporal_output`, as the original node
gave it, whatever the prompt asks), then the start and end, naming rows. The schema carries only what grammar-constrained
sampling enforces (llama.cpp's json-schema-to-grammar, under Ollama): rows are
integers within bounds or one of an enum, confidence an integer percent;
bounds on plain numbers and the meaning of free strings are not enforced, so
the node does not lean on them.

A timeline longer than the LLM's context is read in windows that each
propose where the task may start and end; a last call decides among the
proposals. The task is written after the timeline in every prompt, so if a
prompt were ever cut from the front (as Ollama does, silently) the task is
not what is lost. A bad answer is asked again, for this step alone: the
captions are kept (worker/captions.py).
"""

import csv
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from server.engines import Engine
from server.errors import BadInput, PeerUnavailable
from worker.captions import Row

log = logging.getLogger(__name__)

ANSWER_TOKENS = 1024  # tokens the answer may take: the reply, two moments and the reasoning, with room to spare
REPLY_CHARS = 1200  # longest reply in words the schema allows
NOTE_CHARS = 300  # of a part's reply, as the last question over a long timeline reads it
REASONING_CHARS = 400  # longest reasoning the schema allows, so the answer fits ANSWER_TOKENS
LLM_TRIES = 3  # asks of one question before a bad answer fails the attempt
OVERLAP = 2  # rows a window repeats from the one before, so a boundary between windows is seen from both
REPLANS = 3  # times a timeline is cut into smaller windows after a prompt proved longer than estimated
OPTIONS = {"temperature": 0, "num_predict": ANSWER_TOKENS}

PREFACE = "Photos taken by smart glasses in a store, in time order, one line per photo: `row,time,event`."
QUESTION = (
    "Answer in JSON. In `answer`, reply to the prompt below in words, from the timeline. Then find the photo "
    "where the task the prompt is about started and the photo where it ended: `start` and `end`, each with the "
    "photo's `row`, your `confidence` from 0 to 100 and a short `reasoning`, or null when it is not seen; and "
    "an overall `reasoning`."
)
WINDOW_QUESTION = (
    "These are rows {first} to {last} of a longer timeline of {total} rows. Answer in JSON. In `answer`, say in "
    "words what these rows tell about the prompt below. Then say where within these rows the task the prompt "
    "is about starts and where it ends: `start` and `end`, each with the photo's `row`, your `confidence` from "
    "0 to 100 and a short `reasoning`, or null when that moment is not in these rows; and an overall `reasoning`."
)
FINAL_QUESTION = (
    "A long timeline was read in parts. What each part told about the prompt below:\n{notes}\n"
    "The rows above are the photos where the parts saw the task start or end, with their neighbours. " + QUESTION
)


@dataclass(frozen=True)
class Moment:
    row: int
    confidence: float  # 0..1
    reasoning: str


@dataclass(frozen=True)
class Verdict:
    start: Moment | None
    end: Moment | None
    reasoning: str
    answer: str = ""  # the prompt answered in words


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    windows: int  # parts the timeline was read in (1: at once)
    calls: int  # questions asked of the LLM, repeats included


def timeline_csv(rows: Sequence[Row]) -> str:
    """The original's `logs`: the header `id,timestamp,event`, then a row of
    three quoted fields per image, each line ending in a newline (its
    worker/vlm.py; a quote within a caption doubled, as CSV has it)."""
    out = io.StringIO()
    out.write("id,timestamp,event\n")
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows((row.image_id, row.original_timestamp, row.caption.caption) for row in rows)
    return out.getvalue()


def _lines(rows: Sequence[Row]) -> list[str]:
    """Row n (from 1) as the LLM reads it: short, so a long timeline fits."""
    days = {row.timestamp[:10] for row in rows}
    clock = slice(11, 19) if len(days) == 1 else slice(0, 19)
    return [f"{n},{row.timestamp[clock].replace('T', ' ')},{row.caption.caption}" for n, row in enumerate(rows, 1)]


def _prompt(task: str, lines: Sequence[str], question: str, day: str | None) -> str:
    when = f" All were taken on {day} (UTC)." if day else ""
    timeline = "\n".join(["row,time,event", *lines])
    return f"{PREFACE}{when}\n\n{timeline}\n\n{question}\n\nPrompt: {task}\n"


def schema(rows: Sequence[int]) -> dict[str, Any]:
    """The answer's shape, naming only `rows`."""
    allowed = sorted(set(rows))
    if allowed == list(range(allowed[0], allowed[-1] + 1)):
        row = {"type": "integer", "minimum": allowed[0], "maximum": allowed[-1]}
    else:
        row = {"type": "integer", "enum": allowed}
    moment = {
        "type": ["object", "null"],
        "properties": {
            "row": row,
            "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
            "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
        },
        "required": ["row", "confidence", "reasoning"],
    }
    return {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": REPLY_CHARS},
            "start": moment,
            "end": moment,
            "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
        },
        "required": ["answer", "start", "end", "reasoning"],
    }


def _bad(why: str) -> PeerUnavailable:
    return PeerUnavailable(f"the LLM's answer does not fit the timeline: {why}", code="bad_model_answer")


def _text(value: Any, limit: int = REASONING_CHARS) -> str:
    return " ".join(value.split())[:limit] if isinstance(value, str) else ""


def _moment(answer: dict, key: str, allowed: set[int]) -> Moment | None:
    value = answer.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(f"{key} is not an object")
    row = value.get("row")
    if isinstance(row, bool) or not isinstance(row, int) or row not in allowed:
        raise _bad(f"{key}.row {row!r} is not one of the rows asked about")
    confidence = value.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise _bad(f"{key}.confidence is not a number")
    # Repaired rather than refused: a percent out of range says no less than one within it.
    return Moment(row, min(max(float(confidence), 0.0), 100.0) / 100, _text(value.get("reasoning")))


def parse(answer: Any, allowed: set[int]) -> Verdict:
    """The verdict in an answer, or PeerUnavailable(bad_model_answer) saying why not."""
    if not isinstance(answer, dict):
        raise _bad("not a JSON object")
    start, end = _moment(answer, "start", allowed), _moment(answer, "end", allowed)
    if start and end and end.row < start.row:
        raise _bad("the end comes before the start")
    return Verdict(start, end, _text(answer.get("reasoning")), _text(answer.get("answer"), REPLY_CHARS))


class _Asker:
    """Asks the LLM one question at a time, again when the answer is bad."""

    def __init__(self, engine: Engine, model: str, task: str, day: str | None):
        self.engine, self.model, self.task, self.day = engine, model, task, day
        self.calls = 0

    def prompt(self, lines: Sequence[str], question: str) -> str:
        return _prompt(self.task, lines, question, self.day)

    async def ask(self, lines: Sequence[str], rows: Sequence[int], question: str) -> Verdict:
        prompt, allowed = self.prompt(lines, question), set(rows)
        for attempt in range(1, LLM_TRIES + 1):
            self.calls += 1
            answer = await self.engine.complete_json(prompt, schema(rows), model=self.model, options=OPTIONS)
            try:
                return parse(answer, allowed)
            except PeerUnavailable as exc:
                if attempt == LLM_TRIES:
                    raise
                log.warning("%s; asking again", exc.message)
        raise AssertionError("unreachable")


def _span(lines: Sequence[str], start: int, room: int, cost: Callable[[str], int]) -> range:
    """The rows from `start` whose lines fit in `room` tokens."""
    end, used = start, 0
    while end < len(lines) and used + cost(lines[end]) <= room:
        used += cost(lines[end])
        end += 1
    if end == start:
        raise BadInput(f"timeline row {start + 1} alone is longer than the LLM's context", code="prompt_too_long")
    return range(start, end)


async def decide(rows: Sequence[Row], task: str, engine: Engine, model: str) -> Decision:
    """The prompt answered, and when the task started and ended, reading the
    timeline in as few windows as fit."""
    days = {row.timestamp[:10] for row in rows}
    asker = _Asker(engine, model, task, days.pop() if len(days) == 1 else None)
    lines = _lines(rows)
    for replan in range(1, REPLANS + 1):
        try:
            verdict, windows = await _decide(asker, lines, list(range(1, len(lines) + 1)))
            return Decision(verdict, windows, asker.calls)
        except BadInput as exc:
            # The engine saw a prompt longer than estimated and now estimates larger.
            if exc.code != "prompt_too_long" or replan == REPLANS:
                raise
            log.warning("%s; reading the timeline in smaller windows", exc.message)
    raise AssertionError("unreachable")


async def _decide(asker: _Asker, lines: list[str], numbers: list[int]) -> tuple[Verdict, int]:
    """The verdict over `lines`, whose rows are numbered `numbers`, and the windows read."""
    engine, model = asker.engine, asker.model
    window = await engine.window(model)
    estimator = engine.tokens[model]
    widest = WINDOW_QUESTION.format(first=numbers[-1], last=numbers[-1], total=numbers[-1])

    def room(question: str = widest) -> int:  # read again before each question: each answer sharpens the estimates
        return window - ANSWER_TOKENS - estimator.prompt(asker.prompt([], question))

    def window_room() -> int:
        left = room()
        if left <= 0:
            raise BadInput(f"the task is too long for the LLM's context of {window} tokens", code="prompt_too_long")
        return left

    def cost(line: str) -> int:
        return estimator.text(line + "\n")

    if sum(cost(line) for line in lines) <= window_room():
        return await asker.ask(lines, numbers, QUESTION), 1

    found: list[tuple[range, Verdict]] = []
    span = range(0)
    while span.stop < len(lines):
        span = _span(lines, max(span.stop - OVERLAP, span.start + 1) if span else 0, window_room(), cost)
        question = WINDOW_QUESTION.format(first=numbers[span[0]], last=numbers[span[-1]], total=numbers[-1])
        found.append((span, await asker.ask([lines[i] for i in span], [numbers[i] for i in span], question)))
    log.info("the timeline of %d photos was read in %d windows of %d tokens", len(lines), len(found), window)
    notes = "\n".join(f"Rows {numbers[s[0]]} to {numbers[s[-1]]}: {v.answer[:NOTE_CHARS] or '-'}" for s, v in found)
    proposals = [m.row for _, v in found for m in (v.start, v.end) if m is not None]
    if not proposals:
        return Verdict(None, None, "no part of the timeline showed the task", _joined(found, numbers)), len(found)
    # The proposals and their neighbours, read together with what each part
    # said (in windows again, should they not fit).
    index = {number: i for i, number in enumerate(numbers)}
    near = sorted({i for row in proposals for i in (index[row] - 1, index[row], index[row] + 1) if 0 <= i < len(lines)})
    final_lines, final_numbers = [lines[i] for i in near], [numbers[i] for i in near]
    final_question = FINAL_QUESTION.format(notes=notes)
    if sum(cost(line) for line in final_lines) <= room(final_question):
        return await asker.ask(final_lines, final_numbers, final_question), len(found)
    if len(near) < len(lines):
        verdict = (await _decide(asker, final_lines, final_numbers))[0]
        return Verdict(verdict.start, verdict.end, verdict.reasoning, _joined(found, numbers)), len(found)
    return _earliest_and_latest(found, numbers), len(found)


def _joined(found: Sequence[tuple[range, Verdict]], numbers: Sequence[int]) -> str:
    """What the parts of a long timeline said, as one reply, when no last
    question could read them together."""
    parts = [f"Rows {numbers[s[0]]} to {numbers[s[-1]]}: {v.answer}" for s, v in found if v.answer]
    return " ".join(parts)[:REPLY_CHARS]


def _earliest_and_latest(found: Sequence[tuple[range, Verdict]], numbers: Sequence[int]) -> Verdict:
    """The windows' own proposals joined, when no one prompt can hold them all."""
    starts = [v.start for _, v in found if v.start is not None]
    ends = [v.end for _, v in found if v.end is not None]
    start = min(starts, key=lambda m: m.row, default=None)
    end = max(ends, key=lambda m: m.row, default=None)
    if start and end and end.row < start.row:
        end = None
    reasoning = "joined from the parts of the timeline: the first start and the last end seen"
    return Verdict(start, end, reasoning, _joined(found, numbers))


def task_output(verdict: Verdict, rows: Sequence[Row]) -> dict[str, Any]:
    """The structured start and end, by image, as jobs report it."""

    def moment(m: Moment | None) -> dict[str, Any] | None:
        if m is None:
            return None
        row = rows[m.row - 1]
        return {"image_id": row.image_id, "timestamp": row.timestamp, "confidence": m.confidence, "reasoning": m.reasoning}

    return {"start": moment(verdict.start), "end": moment(verdict.end), "reasoning": verdict.reasoning}


def reply(verdict: Verdict, rows: Sequence[Row]) -> str:
    """`temporal_output`: the LLM's reply to the prompt in words, or, should
    it have written none, the start and end said in words."""
    if verdict.answer:
        return verdict.answer

    def said(m: Moment) -> str:
        return f"{rows[m.row - 1].timestamp} (image {rows[m.row - 1].image_id})"

    if verdict.start is None and verdict.end is None:
        return "The task is not seen in the timeline."
    parts = [f"It started at {said(verdict.start)}" if verdict.start else "Its start is not seen"]
    parts.append(f"ended at {said(verdict.end)}." if verdict.end else "its end is not seen.")
    return ", ".join(parts)
