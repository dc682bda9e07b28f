"""A fake Ollama: a real HTTP server modelled on Ollama v0.32.15, read from its
source and never kinder than it, for the real `ollama` client (sync and async).
Each behaviour names the file of ollama/ollama it comes from.

What that means for a caller: one request per model at a time (the others wait
with nothing written back), a pending queue that answers 503 when full, a
context window that silently cuts long text prompts from the front and refuses
long image prompts, images dropped by models that cannot see, one image seen
by models trained on one, JSON schemas honoured only as far as llama.cpp's
grammar enforces them, pulls that fail mid-stream.

Answers follow the input so tests can tell them apart: an image is described by
size and dominant colour ("a 64x48 image, mostly red"); a text prompt is echoed
("You said: ..."); a JSON schema is filled from the prompt's timeline (the span
of rows whose event names the colour the task names).

    with FakeOllama(latency=0.1) as fake:
        ollama.Client(fake.url).generate("moondream:1.8b", "what?", images=[jpeg])

Standalone: python -m devpeers.fake_ollama --port 11434 --latency 0.2 --num-parallel 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import csv
import io
import json
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devpeers.http_server import HANG_POLL, Peer, ThreadedServer

VERSION = "0.32.15"
# ollama/ollama v0.32.15: envconfig/config.go (OLLAMA_NUM_PARALLEL, OLLAMA_MAX_QUEUE), server/routes.go
# Serve (defaultNumCtx 4096 below 23 GiB of VRAM, as on a CPU machine)
NUM_PARALLEL = 1
MAX_QUEUE = 512
CONTEXT_LENGTH = 4096  # tokens
NUM_KEEP = 4  # api/types.go DefaultOptions: tokens kept at the front when a prompt is cut
VISION_MIN_CONTEXT = 2048  # server/sched.go getRunner: "multimodal models require at least 2048 context"
PROMPT_IMAGE_TOKENS = 768  # server/prompt.go chatPrompt: its heuristic cost of an image when dropping messages
STREAM_ERROR_AFTER = 3  # tokens a "stream_error" answer writes before the runner dies

MAX_QUEUE_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"  # server/sched.go ErrMaxQueue
RUNNER_CRASH = "an error was encountered while running the model: unexpected EOF"  # llm/llama_server.go Completion
PULL_FAILURES = {  # server/images.go PullModel, server/download.go; {repo} and {tag} filled in
    "missing": "pull model manifest: file does not exist",
    "network": ('pull model manifest: Get "https://registry.ollama.ai/v2/{repo}/manifests/{tag}": '
                "dial tcp: lookup registry.ollama.ai: no such host"),
    "download": ("max retries exceeded: read tcp 192.168.1.20:52144->104.21.75.227:443: "
                 "read: connection reset by peer"),
}


# -- models -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FakeModel:
    """What the fake knows of a model: `context_length` is the trained one (`<arch>.context_length`), `num_ctx`
    the Modelfile's (None: the server default), `image_tokens` the prompt tokens an image costs, `max_images`
    how many images it was trained on (1: it answers about the last one only; None: any)."""

    name: str
    family: str = "llama"
    families: tuple[str, ...] = ()  # () means (family,)
    capabilities: tuple[str, ...] = ("completion",)
    context_length: int = 4096
    num_ctx: int | None = None
    image_tokens: int = 0
    max_images: int | None = None
    parameters: tuple[tuple[str, Any], ...] = ()  # other Modelfile parameters, e.g. ("num_keep", 24)
    parameter_size: str = "7B"

    @property
    def vision(self) -> bool:
        return "vision" in self.capabilities

    def parameter(self, key: str, default=None):
        return next((value for k, value in self.parameters if k == key), default)


# From the models' pages on ollama.com and their GGUF metadata; moondream's one image: m87-labs/moondream
# issues 12 and 56 (729 patch tokens); llava 576 (24x24 CLIP patches); gemma3 256 (SigLIP, pooled).
CATALOGUE = {m.name: m for m in (
    FakeModel("moondream:1.8b", "phi2", ("phi2", "clip"), ("completion", "vision"), 2048, image_tokens=729,
              max_images=1, parameters=(("temperature", 0), ("stop", "<|endoftext|>"), ("stop", "Question:")),
              parameter_size="1B"),
    FakeModel("llama3:latest", "llama", ("llama",), ("completion",), 8192,
              parameters=(("num_keep", 24), ("stop", "<|start_header_id|>"), ("stop", "<|end_header_id|>"),
                          ("stop", "<|eot_id|>")), parameter_size="8.0B"),
    FakeModel("llava:7b", "llama", ("llama", "clip"), ("completion", "vision"), 4096, image_tokens=576,
              max_images=1, parameters=(("stop", "[INST]"), ("stop", "[/INST]")), parameter_size="7B"),
    FakeModel("qwen2.5vl:3b", "qwen25vl", ("qwen25vl",), ("completion", "vision"), 128000, image_tokens=256,
              parameter_size="3.8B"),
    FakeModel("gemma3:4b", "gemma3", ("gemma3",), ("completion", "vision"), 131072, image_tokens=256,
              parameters=(("stop", "<end_of_turn>"), ("temperature", 1), ("top_k", 64), ("top_p", 0.95)),
              parameter_size="4.3B"),
    FakeModel("qwen2.5:0.5b", "qwen2", ("qwen2",), ("completion", "tools"), 32768, parameter_size="494.03M"),
)}
DEFAULT_MODELS = ("moondream:1.8b", "llama3:latest")


def _full_name(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


def _spec(model: str | FakeModel) -> FakeModel:
    if isinstance(model, FakeModel):
        return model
    name = _full_name(model)
    return CATALOGUE.get(name) or FakeModel(name)


# -- tokens -----------------------------------------------------------------------------------------------------
# Roughly how a BPE tokenizer splits text: up to 5 letters, up to 3 digits or one other mark per token, with the
# whitespace before it. The pieces join back into the text, so a prompt can be cut token by token.
TOKEN_RE = re.compile(r"\s*(?:[^\W\d_]{1,5}|\d{1,3}|\S)|\s+")
BOS, END, ANSWER = "<s>", "<|end|>", "<|assistant|>"  # the template's special tokens


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(tokenize(text))


# -- images -----------------------------------------------------------------------------------------------------
PALETTE = [
    ("red", (255, 0, 0)), ("green", (0, 128, 0)), ("green", (0, 255, 0)),
    ("blue", (0, 0, 255)), ("yellow", (255, 255, 0)), ("orange", (255, 165, 0)),
    ("purple", (128, 0, 128)), ("white", (255, 255, 255)), ("black", (0, 0, 0)),
    ("grey", (128, 128, 128)),
]
COLOUR_RE = re.compile(r"\b({})\b".format("|".join(sorted({n for n, _ in PALETTE}))), re.IGNORECASE)


def _nearest_colour(rgb: tuple[int, ...]) -> str:
    return min(PALETTE, key=lambda entry: sum((a - b) ** 2 for a, b in zip(rgb, entry[1], strict=False)))[0]


def describe_image(data: bytes) -> str:
    """'a WxH image, mostly <colour>'; raises OSError if Pillow cannot decode it."""
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        im.draft("RGB", (16, 16))  # JPEG: decode at reduced scale, enough for a colour vote
        raw = im.convert("RGB").resize((16, 16)).tobytes()
    votes = Counter(_nearest_colour(tuple(raw[i : i + 3])) for i in range(0, len(raw), 3))
    return f"a {width}x{height} image, mostly {votes.most_common(1)[0][0]}"


# -- the timeline and the task ----------------------------------------------------------------------------------
SEPARATORS = (",", "\t", "|", ";")
HEADER_FIELD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,30}")
ID_WORDS = {"id", "ids", "row", "rows", "index", "idx", "image", "images", "photo", "photos", "frame", "frames",
            "number", "ref"}
TIME_WORDS = {"timestamp", "timestamps", "time", "ts", "date", "datetime", "when", "at"}
EVENT_WORDS = {"event", "events", "caption", "captions", "description", "observation"}
REASON_WORDS = {"reasoning", "reason", "reasons", "explanation", "rationale", "why", "justification"}
ANSWER_WORDS = {"answer", "reply", "response", "summary"}  # asked for a reply in words: it says what it found
CONFIDENCE_WORDS = {"confidence", "score", "probability", "certainty", "likelihood"}
START_WORDS = {"start", "started", "starting", "begin", "began", "beginning", "first", "from"}
END_WORDS = {"end", "ended", "ending", "finish", "finished", "last", "until"}


def _words(key: str) -> list[str]:
    """'startImage_id' -> ['start', 'image', 'id']"""
    return [w.lower() for w in re.split(r"[\W_]+|(?<=[a-z])(?=[A-Z])", key) if w]


def _is_moment(words: list[str]) -> bool:
    """A key that is a moment itself ("start": 3), which names its row."""
    return len(words) == 1 and words[0] in START_WORDS | END_WORDS


@dataclass
class Row:
    id: str
    timestamp: str
    event: str
    position: int  # 1-based, in timeline order

    @property
    def number(self) -> int:
        """What an integer field naming this row gets: its id when ids are numbers, else its position."""
        return int(self.id) if self.id.isdigit() else self.position


def _split(line: str, sep: str, n: int = 0) -> list[str]:
    """The fields of a row; with `n`, the last one takes the rest (an event may hold the separator)."""
    line = line.strip().strip("|") if sep == "|" else line.strip()
    if '"' in line:
        try:
            fields = next(csv.reader([line], delimiter=sep, skipinitialspace=True))
        except (csv.Error, StopIteration):
            fields = line.split(sep)
        if n and len(fields) > n:
            fields = fields[: n - 1] + [sep.join(fields[n - 1 :])]
    else:
        fields = line.split(sep, n - 1) if n else line.split(sep)
    return [f.strip() for f in fields]


def _row(header: list[str] | None, fields: list[str], position: int) -> Row:
    def column(words: set[str], default: int) -> str:
        named = [i for i, name in enumerate(header or []) if _words(name) and _words(name)[-1] in words]
        return fields[named[0] if named else default]

    return Row(fields[0], column(TIME_WORDS, 1), column(EVENT_WORDS, len(fields) - 1), position)


def _table_at(lines: list[str], i: int) -> tuple[list[list[str]], list[str] | None, int] | None:
    """A table starting at lines[i]: a header of names, the first an id (`id,timestamp,event`), then rows of as
    many fields; or, without a header, two or more lines of the same number (at least 3) of fields.
    Returns (rows, header, the line after)."""
    for sep in SEPARATORS:
        head = _split(lines[i], sep)
        if len(head) < 3:
            continue
        if all(HEADER_FIELD_RE.fullmatch(f) for f in head) and _words(head[0])[-1] in ID_WORDS:
            j, body = i + 1, []
            while j < len(lines) and len(fields := _split(lines[j], sep, len(head))) == len(head):
                if not all(set(f) <= set("-: ") for f in fields):  # a markdown rule under the header
                    body.append(fields)
                j += 1
            return body, head, j
        j = i + 1
        while j < len(lines) and len(_split(lines[j], sep)) == len(head):
            j += 1
        if j - i >= 2:
            return [_split(line, sep) for line in lines[i:j]], None, j
    return None


def parse_timeline(prompt: str) -> tuple[list[Row], str]:
    """Split a prompt into timeline rows and the rest (the instruction, the task)."""
    lines, rows, rest, i = prompt.splitlines(), [], [], 0
    while i < len(lines):
        if (table := _table_at(lines, i)) is None:
            rest.append(lines[i])
            i += 1
            continue
        body, header, i = table
        rows += [_row(header, fields, len(rows) + n + 1) for n, fields in enumerate(body)]
    return rows, "\n".join(rest)


@dataclass
class Task:
    """The task-timing answer a prompt holds: the span of timeline rows whose event names the colour named
    outside the timeline (the task); no colour asked: the whole timeline; a colour no row names: nothing."""

    rows: list[Row]
    colour: str | None
    span: list[Row]

    @classmethod
    def read(cls, prompt: str) -> Task:
        rows, rest = parse_timeline(prompt)
        found = COLOUR_RE.search(rest)
        colour = found[1].lower() if found else None
        span = [r for r in rows if re.search(rf"\b{colour}\b", r.event, re.IGNORECASE)] if colour else rows
        return cls(rows, colour, span)

    def describe_span(self) -> str:
        return f"events mentioning {self.colour}" if self.colour else "the whole timeline"

    def reasoning(self) -> str:
        if not self.rows:
            return "no events in the timeline"
        if not self.span:
            return f"no event mentions {self.colour}"
        return f"the task spans {self.describe_span()} ({len(self.span)} of {len(self.rows)} events)"


# -- JSON schemas -----------------------------------------------------------------------------------------------
# What a model that follows the instructions writes where the schema leaves an object free.
FREE_MOMENT = {"type": "object", "properties": {"image_id": {"type": "string"}, "timestamp": {"type": "string"},
                                                "confidence": {"type": "number"}, "reasoning": {"type": "string"}}}
FREE_ANSWER = {"type": "object", "properties": {"start": FREE_MOMENT, "end": FREE_MOMENT,
                                                "reasoning": {"type": "string"}}}


def _bounds(schema: dict) -> tuple[float | None, float | None]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        low = schema["exclusiveMinimum"] + 1
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        high = schema["exclusiveMaximum"] - 1
    return low, high


def _clamp(value, schema: dict):
    low, high = _bounds(schema)
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return value


class SchemaAnswer:
    """A JSON schema filled as grammar-constrained sampling fills it (llm/llama_server.go passes the schema to
    llama-server; llama.cpp common/json-schema-to-grammar.cpp turns it into a grammar). What the grammar enforces
    always holds: object shape and every property, types (a null only where allowed), enum, const, integer
    minimum/maximum, string min/maxLength, array min/maxItems. What it does not enforce holds only as far as the
    model behaves: number minimum/maximum ("TODO" there) and whether a free string names a real row. Mode
    "unbounded" breaks those (confidence 1.7, image ids like "photo 3"); "reversed" answers end before start.
    Values come from the prompt's Task, chosen by property name."""

    def __init__(self, schema: dict, task: Task, text: str, mode: str = "ok"):
        self.root, self.task, self.text, self.mode = schema, task, text, mode
        span = task.span[::-1] if mode == "reversed" else task.span
        self.start, self.end = (span[0], span[-1]) if span else (None, None)

    def fill(self) -> Any:
        return self._value(self.root, "", self.start, None)

    def _resolve(self, schema: Any) -> dict:
        if not isinstance(schema, dict):
            return {}
        if isinstance(ref := schema.get("$ref"), str) and ref.startswith("#/"):
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return self._resolve(target)
        if all_of := schema.get("allOf"):
            merged = {k: v for part in all_of for k, v in self._resolve(part).items()}
            return merged | {k: v for k, v in schema.items() if k != "allOf"}
        return schema

    def _value(self, schema: Any, key: str, row: Row | None, moment: str | None) -> Any:
        schema, words = self._resolve(schema), _words(key)
        if words and words[0] in START_WORDS:
            moment, row = "start", self.start
        elif words and words[0] in END_WORDS:
            moment, row = "end", self.end
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._enum(schema["enum"], row, moment)
        if alternatives := schema.get("anyOf") or schema.get("oneOf"):
            nulls = [a for a in alternatives if self._resolve(a).get("type") == "null"]
            if nulls and (moment and row is None or len(nulls) == len(alternatives)):
                return None
            return self._value(next(a for a in alternatives if a not in nulls), key, row, moment)
        types = schema.get("type") or ("object" if "properties" in schema else "array" if "items" in schema
                                       else "string")
        types = [types] if isinstance(types, str) else list(types)
        if "null" in types and (types == ["null"] or moment and row is None):
            return None
        kind = next(t for t in types if t != "null")
        if kind == "object":
            if "properties" not in schema:  # free: the model writes what the prompt asks for
                schema = FREE_MOMENT if moment else FREE_ANSWER if schema is self.root else {"properties": {}}
            return {k: self._value(v, k, row, moment) for k, v in schema["properties"].items()}
        if kind == "array":
            return self._array(schema, key, row, moment)
        if kind in ("number", "integer"):
            return self._number(schema, words, row, moment, integer=kind == "integer")
        if kind == "boolean":
            return bool(self.task.span)
        return self._string(schema, words, row, moment)

    def _enum(self, values: list, row: Row | None, moment: str | None) -> Any:
        if row is None and moment and None in values:
            return None
        if row is not None:
            for wanted in (row.id, str(row.number)):
                if wanted in [str(v) for v in values]:
                    return next(v for v in values if str(v) == wanted)
        named = f"{row.event if row else ''} {self.task.colour or ''}"
        return next((v for v in values if isinstance(v, str) and v
                     and re.search(rf"\b{re.escape(v)}\b", named, re.IGNORECASE)), values[0])

    def _array(self, schema: dict, key: str, row: Row | None, moment: str | None) -> list:
        rows = (self.task.span[::-1] if self.mode == "reversed" else self.task.span) or [row]
        count = max(len(rows), schema.get("minItems", 0))
        count = min(count, schema.get("maxItems", count))
        return [self._value(schema.get("items") or {}, key, rows[i % len(rows)], moment) for i in range(count)]

    def _number(self, schema: dict, words: list[str], row: Row | None, moment: str | None, *, integer: bool):
        names_row = row is not None and (words[-1:] and words[-1] in ID_WORDS or _is_moment(words))
        confidence = any(w in CONFIDENCE_WORDS for w in words)
        if confidence:  # on the schema's scale: 0..1, or a percent for an integer or a maximum over 1
            high = _bounds(schema)[1]
            value = (0.9 if self.task.colour else 0.5) * (high if high and high > 1 else 100 if integer else 1)
        else:
            value = row.number if names_row else len(self.task.span)
        if integer:  # the grammar enforces integer bounds
            return _clamp(int(value), schema)
        if self.mode == "unbounded" and (confidence or "maximum" in schema):
            return schema.get("maximum", 1) + 0.7  # number bounds are not in the grammar
        return _clamp(value, schema)

    def _string(self, schema: dict, words: list[str], row: Row | None, moment: str | None) -> str:
        last = words[-1] if words else ""
        if row is not None and (last in ID_WORDS or _is_moment(words)):
            text = f"photo {row.position}" if self.mode == "unbounded" else row.id
        elif row is not None and last in TIME_WORDS:
            text = row.timestamp
        elif row is not None and last in EVENT_WORDS:
            text = row.event
        elif last in REASON_WORDS or last in ANSWER_WORDS and not moment:
            text = self._reasoning(row, moment)
        elif moment and row is None:
            text = ""  # forced to say something about a moment that is not there
        else:
            text = self.text
        text = text[: schema["maxLength"]] if isinstance(schema.get("maxLength"), int) else text
        return text.ljust(schema.get("minLength", 0) if isinstance(schema.get("minLength"), int) else 0)

    def _reasoning(self, row: Row | None, moment: str | None) -> str:
        if moment and row is not None:
            which = "first" if moment == "start" else "last"
            return f"{which} of {self.task.describe_span()}: {row.event}"
        return self.task.reasoning()


# -- what a runner evaluates ------------------------------------------------------------------------------------
def _render(messages: list[dict]) -> list[tuple[int | None, str]]:
    """The prompt as a template renders it, token by token with the message each came from: a BOS, each
    message between its role and an end token, then the answer's role."""
    pieces: list[tuple[int | None, str]] = [(None, BOS)]
    for n, message in enumerate(messages):
        pieces.append((None, f"<|{message['role']}|>"))
        pieces += [(n, piece) for piece in tokenize(message["content"])]
        pieces.append((None, END))
    return pieces + [(None, ANSWER)]


def _cut_front(pieces: list, num_ctx: int, num_keep: int) -> list:
    """llm/llama_server.go completionPromptForRequest + contextShiftPromptLimit: keep num_keep tokens and the BOS,
    drop what follows until the prompt is num_ctx - (num_ctx - keep) // 2 tokens; logged only."""
    keep = min((len(pieces) if num_keep < 0 else num_keep) + 1, num_ctx - 1)
    limit = num_ctx - max((num_ctx - keep) // 2, 1)
    return pieces[:keep] + pieces[keep + len(pieces) - limit :]


@dataclass
class Evaluation:
    """What a runner makes of a request within its num_ctx."""

    messages: list[dict]  # those kept
    seen: list[str]  # what is left of each kept message's text
    images: list[bytes]  # those the model encodes: none without a vision projector
    prompt_tokens: int  # the whole prompt, as sent
    evaluated: int  # what the runner evaluates (prompt_eval_count)
    truncated: bool
    overflow: bool  # over the window and not cut: llama-server refuses it

    @classmethod
    def of(cls, model: FakeModel, messages: list[dict], num_ctx: int, num_keep: int, truncate: bool):
        def images_of(msgs: list[dict]) -> list[bytes]:
            # runner/llamarunner/runner.go (v0.11) inputs: without a projector images are dropped silently
            return [image for m in msgs for image in m["images"]] if model.vision else []

        def cost(msgs: list[dict], per_image: int) -> int:
            return len(_render(msgs)) + per_image * len(images_of(msgs))

        def kept_from(first: int) -> list[dict]:
            return [m for m in messages[:first] if m["role"] == "system"] + messages[first:]

        prompt_tokens, first = cost(messages, model.image_tokens), 0
        if truncate:  # server/prompt.go chatPrompt: drop the oldest messages but the system ones until it fits
            while first < len(messages) - 1 and cost(kept_from(first), PROMPT_IMAGE_TOKENS) > num_ctx:
                first += 1
        kept = kept_from(first)
        images, pieces = images_of(kept), _render(kept)
        evaluated = len(pieces) + model.image_tokens * len(images)
        overflow = cut = False
        if evaluated > num_ctx - 1:  # llm/llama_server.go: fullPromptLimit = NumCtx - 1
            if images or not truncate:  # media is never truncated; llama-server refuses the request
                overflow = True
            else:
                pieces, cut = _cut_front(pieces, num_ctx, num_keep), True
                evaluated = len(pieces)
        seen = ["".join(p for owner, p in pieces if owner == n) for n in range(len(kept))]
        return cls(kept, seen, images, prompt_tokens, evaluated, cut or len(kept) < len(messages), overflow)

    def last_user_text(self) -> str:
        return next((self.seen[n] for n in reversed(range(len(self.messages)))
                     if self.messages[n]["role"] == "user"), "")


def overflow_error(evaluated: int, num_ctx: int) -> str:
    """llama-server's refusal, passed on as its body (llm/llama_server.go statusErrorMessage)."""
    return json.dumps({"error": {"code": 400, "message": "the request exceeds the available context size, try "
                                 "increasing it", "type": "exceed_context_size_error",
                                 "n_prompt_tokens": evaluated, "n_ctx": num_ctx}}, separators=(",", ":"))


# -- the HTTP side ----------------------------------------------------------------------------------------------
@dataclass
class _Error:
    status: int
    message: str


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _merged_answer(parts: list[dict]) -> dict:
    """A generate/chat answer not streamed: the last part with all the text (server/routes.go)."""
    text = "".join(p.get("response") or (p.get("message") or {}).get("content") or "" for p in parts)
    final = dict(parts[-1])
    if "message" in final:
        final["message"] = {**final["message"], "content": text}
    else:
        final["response"] = text
    return final


class _Answer:
    """An answer fed by `events` (dicts, then maybe an _Error), sent as gin sends Ollama's: no status before the
    first event, so an error before any output has its own status and JSON body, one after it is a last
    `{"error"}` line of an HTTP 200 (server/routes.go streamResponse); not streamed, one JSON at the end or the
    error's status (GenerateHandler, waitForStream). A client leaving cancels the work (`on_drop` after); the
    server stopping refuses what has not started; `cut` drops the connection after the first line."""

    def __init__(self, events: AsyncIterator, *, stream: bool, merge, stopping: threading.Event,
                 on_drop=None, cut: bool = False):
        self.events, self.stream, self.merge, self.stopping = events, stream, merge, stopping
        self.on_drop, self.cut = on_drop, cut
        self.started = False

    async def __call__(self, scope, receive, send) -> None:
        writer = asyncio.ensure_future(self._write(send))
        left = asyncio.ensure_future(self._client_left(receive))
        stopped = asyncio.ensure_future(self._stopped_before_start())
        try:
            done, _ = await asyncio.wait({writer, left, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, left, stopped):
                task.cancel()
            await asyncio.gather(writer, left, stopped, return_exceptions=True)
        if writer in done:
            writer.result()
        elif left in done and self.on_drop:
            self.on_drop()
        elif stopped in done and not self.started:
            await self._send_json(send, 503, {"error": "server is shutting down"})

    @staticmethod
    async def _client_left(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _stopped_before_start(self) -> None:
        while not self.started:
            if self.stopping.is_set():
                return
            await asyncio.sleep(HANG_POLL)
        await asyncio.Future()  # started: it runs to its end

    async def _write(self, send) -> None:
        parts = []
        async with aclosing(self.events) as events:
            async for event in events:
                if isinstance(event, _Error):
                    if not self.started:
                        return await self._send_json(send, event.status, {"error": event.message})
                    await self._send_line(send, {"error": event.message})
                    break
                if not self.stream:
                    parts.append(event)
                    continue
                await self._send_line(send, event)
                if self.cut:
                    return  # uvicorn closes a connection whose body was left unfinished
        if self.stream or not parts:
            await self._send_line(send, None)
        else:
            await self._send_json(send, 200, self.merge(parts))

    async def _send_json(self, send, status: int, value: dict) -> None:
        body = json.dumps(value).encode()
        self.started = True
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _send_line(self, send, value: dict | None) -> None:
        """One NDJSON line; None ends the body."""
        if not self.started:
            self.started = True
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/x-ndjson")]})
        body = b"" if value is None else json.dumps(value).encode() + b"\n"
        await send({"type": "http.response.body", "body": body, "more_body": value is not None})


class _Runner:
    """A loaded model (server/sched.go runnerRef): its num_ctx, `num_parallel` slots taken FIFO
    (llm/llama_server.go sem), and `refs`, the requests using it or waiting for a slot."""

    def __init__(self, num_ctx: int, num_parallel: int):
        self.num_ctx = num_ctx
        self.slots = asyncio.Semaphore(max(num_parallel, 1))
        self.refs = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def use(self) -> _Runner:
        self.refs += 1
        self.idle.clear()
        return self

    def release(self) -> None:
        self.refs -= 1
        if not self.refs:
            self.idle.set()


class FakeOllama(Peer):
    """Ollama v0.32.15 as a test peer. Options (the real defaults): `num_parallel` slots per loaded model,
    `max_queue` requests pending a load, `context_length` (the server's default num_ctx), `load_time` (s) per
    model load, `latency` (s) of prompt evaluation once a slot is taken, `token_delay` (s) between tokens,
    `fail_rate` of generate/chat answered HTTP 500 (seeded by `seed`), `pullable` models (None: any),
    `pull_failures` (a count or a list of "network", "download", "missing" or messages) served before pulls work.
    `mode`, settable at any time: "ok", "error" (500 on everything), "garbage" (200, not JSON), "hang" (no answer
    until stop or another mode), "cut" (a streamed answer's connection dropped after its first line),
    "stream_error" (200, a few tokens, then an {"error"} line), "unbounded" (schema answers break what the
    grammar does not enforce), "reversed" (schema answers end before they start).
    `num_parallel` applies from the next load, as OLLAMA_NUM_PARALLEL does.
    Records: `requests`, one dict per generate/chat as it arrives: path, model (as sent), prompt or messages,
    images (count), options, format, stream; then num_ctx (effective), waited (found every slot taken),
    queued_seconds (arrival to slot), prompt_tokens (the whole prompt), truncated, prompt_eval_count (what was
    evaluated), done_reason (None until done). `cancelled` (answers the client left, waiting or not),
    `in_flight` (requests holding a slot), `max_in_flight`, `max_in_flight_by_model`, `waiting` (for a slot),
    `pending` (for a load), `loads`, `loaded` ({model: num_ctx}), `models` (full names installed)."""

    def __init__(self, models=DEFAULT_MODELS, *, num_parallel: int = NUM_PARALLEL, max_queue: int = MAX_QUEUE,
                 context_length: int = CONTEXT_LENGTH, latency: float = 0.0, token_delay: float = 0.0,
                 load_time: float = 0.0, fail_rate: float = 0.0, seed: int = 0, pullable=None,
                 pull_failures=0, host: str = "127.0.0.1", port: int = 0):
        specs = [_spec(m) for m in models]
        self._specs = {m.name: m for m in specs}
        self.models = {m.name for m in specs}
        self.pullable = None if pullable is None else {_full_name(m) for m in pullable}  # None: any
        self.pull_failures = pull_failures
        self.num_parallel, self.max_queue, self.context_length = num_parallel, max_queue, context_length
        self.latency, self.token_delay, self.load_time, self.fail_rate = latency, token_delay, load_time, fail_rate
        self.mode = "ok"
        self.requests: list[dict] = []
        self.cancelled = self.in_flight = self.max_in_flight = self.waiting = self.pending = self.loads = 0
        self.max_in_flight_by_model: Counter[str] = Counter()
        self._in_flight_by_model: Counter[str] = Counter()
        self._runners: dict[str, _Runner] = {}
        self._loader = asyncio.Lock()
        self._rng = random.Random(seed)
        self._port = port  # as asked for; the bound one is self._http.port
        self.app = Starlette(routes=[
            Route("/api/generate", self._generate, methods=["POST"]),
            Route("/api/chat", self._chat, methods=["POST"]),
            Route("/api/tags", self._tags, methods=["GET"]),
            Route("/api/show", self._show, methods=["POST"]),
            Route("/api/pull", self._pull, methods=["POST"]),
            Route("/api/version", self._version, methods=["GET"]),
        ])
        self._http = ThreadedServer(self.app, host=host, port=port, name="fake-ollama")

    # -- lifecycle -------------------------------------------------------------------
    @property
    def url(self) -> str:
        port = self._http.port if self._http.port is not None else self._port
        return f"http://{self._http.host}:{port}"

    def start(self):
        if not self._http.running:  # a restarted Ollama has nothing loaded (and a new event loop)
            self._runners, self._loader = {}, asyncio.Lock()
        return super().start()

    @property
    def loaded(self) -> dict[str, int]:
        return {name: runner.num_ctx for name, runner in list(self._runners.items())}

    def model(self, name: str) -> FakeModel | None:
        """The installed model `name` (`:latest` by default, any case: server/routes.go getExistingName), or None."""
        full = next((m for m in self.models if m.lower() == _full_name(name).lower()), None)
        return (self._specs.get(full) or _spec(full)) if full else None

    # -- behaviour switches ----------------------------------------------------------
    async def _misbehaviour(self) -> Response | None:
        """The answer that `mode` imposes instead of the real one, if any."""
        if self.mode == "hang":
            await self._http.hang(lambda: self.mode == "hang")
        if self._http.stopping.is_set():
            return _error(503, "server is shutting down")
        if self.mode == "error":
            return _error(500, "llama runner process has terminated: exit status 2")
        if self.mode == "garbage":
            return Response("<html>502 Bad Gateway</html>\n{not json", media_type="application/x-ndjson")
        return None

    @staticmethod
    async def _body(request: Request) -> dict:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {}

    # -- generate / chat -------------------------------------------------------------
    async def _generate(self, request: Request) -> Response:
        body = await self._body(request)
        messages = [{"role": "system", "content": body["system"], "images": []}] if body.get("system") else []
        messages.append({"role": "user", "content": body.get("prompt") or "", "images": body.get("images") or []})
        if not body.get("prompt"):
            messages = []  # server/routes.go GenerateHandler: no prompt, the model is only loaded
        record = {"path": "/api/generate", "prompt": body.get("prompt") or ""}
        return await self._answer(record, body, messages)

    async def _chat(self, request: Request) -> Response:
        body = await self._body(request)
        messages = [{"role": m.get("role") or "user", "content": m.get("content") or "",
                     "images": m.get("images") or []} for m in body.get("messages") or [] if isinstance(m, dict)]
        record = {"path": "/api/chat",
                  "messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        return await self._answer(record, body, messages)

    async def _answer(self, record: dict, body: dict, messages: list[dict]) -> Response:
        name = body.get("model") or ""
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        record.update(model=name, images=sum(len(m["images"]) for m in messages), options=options,
                      format=body.get("format"), stream=body.get("stream", True), num_ctx=None,
                      prompt_tokens=None, prompt_eval_count=None, truncated=False, waited=False,
                      queued_seconds=None, done_reason=None)
        self.requests.append(record)
        if refusal := await self._misbehaviour():
            return refusal
        if self.fail_rate and self._rng.random() < self.fail_rate:
            return _error(500, "llama runner process has terminated: signal: killed")
        if (model := self.model(name)) is None:  # server/routes.go GenerateHandler, ChatHandler
            return _error(404, f"model '{name}' not found")
        try:
            for m in messages:
                m["images"] = [base64.b64decode(s, validate=True) for s in m["images"]]
        except (binascii.Error, ValueError, TypeError):
            return _error(400, "illegal base64 data at input byte 0")
        record["num_ctx"] = self._num_ctx(model, options)
        work = self._work(record, model, messages, options, body)
        return _Answer(work, stream=body.get("stream") is not False, merge=_merged_answer,
                       stopping=self._http.stopping, on_drop=self._dropped, cut=self.mode == "cut")

    def _num_ctx(self, model: FakeModel, options: dict) -> int:
        asked = options.get("num_ctx")
        if not isinstance(asked, (int, float)) or isinstance(asked, bool):
            asked = model.num_ctx or self.context_length  # server/routes.go modelOptions: Modelfile, else default
        num_ctx = max(int(asked), 4)  # server/sched.go getRunner
        if model.vision:
            num_ctx = max(num_ctx, VISION_MIN_CONTEXT)
        return min(num_ctx, model.context_length)  # llm/server.go NewLlamaServer: capped at the trained context

    async def _work(self, record: dict, model: FakeModel, messages: list[dict], options: dict, body: dict):
        arrived = time.monotonic()
        runner = await self._runner_for(model, record["num_ctx"])
        if runner is None:
            yield _Error(503, MAX_QUEUE_MESSAGE)  # server/routes.go handleScheduleError
            return
        try:
            loaded = time.monotonic()
            if not messages:  # server/routes.go: an empty prompt only loads the model
                record["done_reason"] = "load"
                yield self._part(record, "") | {"done": True, "done_reason": "load"}
                return
            async with self._slot(runner, model, record):
                record["queued_seconds"] = time.monotonic() - arrived
                async for event in self._evaluate(record, model, messages, options, body, arrived, loaded):
                    yield event
        finally:
            runner.release()

    async def _runner_for(self, model: FakeModel, num_ctx: int) -> _Runner | None:
        """server/sched.go getRunner: a loaded runner is used at once unless it needs a reload (another num_ctx);
        else the request joins the pending queue (None when full), which loads one request at a time
        (processPending); a reload waits for the runner to be idle."""
        runner = self._runners.get(model.name)
        if runner is not None and runner.num_ctx == num_ctx:
            return runner.use()
        if self.pending >= self.max_queue:
            return None
        self.pending += 1
        try:
            await self._loader.acquire()
        finally:
            self.pending -= 1
        try:
            runner = self._runners.get(model.name)
            if runner is not None and runner.num_ctx != num_ctx:
                await runner.idle.wait()
                del self._runners[model.name]
                runner = None
            if runner is None:
                if self.load_time:
                    await asyncio.sleep(self.load_time)
                runner = self._runners[model.name] = _Runner(num_ctx, self.num_parallel)
                self.loads += 1
            return runner.use()
        finally:
            self._loader.release()

    @asynccontextmanager
    async def _slot(self, runner: _Runner, model: FakeModel, record: dict):
        """One of the runner's slots (llm/llama_server.go Completion: s.sem.Acquire), waited for FIFO."""
        record["waited"] = runner.slots.locked()
        self.waiting += 1
        try:
            await runner.slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self._in_flight_by_model[model.name] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_in_flight_by_model[model.name] = max(self.max_in_flight_by_model[model.name],
                                                      self._in_flight_by_model[model.name])
        try:
            yield
        finally:
            self.in_flight -= 1
            self._in_flight_by_model[model.name] -= 1
            runner.slots.release()

    async def _evaluate(self, record, model, messages, options, body, arrived: float, loaded: float):
        num_ctx = record["num_ctx"]
        num_keep = options.get("num_keep", model.parameter("num_keep", NUM_KEEP))
        ev = Evaluation.of(model, messages, num_ctx, num_keep if isinstance(num_keep, int) else NUM_KEEP,
                           truncate=body.get("truncate") is not False)
        record.update(prompt_tokens=ev.prompt_tokens, truncated=ev.truncated)
        if ev.overflow:
            yield _Error(400, overflow_error(ev.evaluated, num_ctx))
            return
        try:
            captions = [describe_image(image) for image in ev.images]  # the projector encodes every image
        except Exception:
            yield _Error(400, "failed to process inputs: image: unknown format")
            return
        if self.latency:
            await asyncio.sleep(self.latency)  # prompt evaluation
        evaluated = time.monotonic()
        text = self._text(model, ev, captions, body.get("format"))
        tokens, reason = re.findall(r"\s*\S+", text), "stop"
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):  # llm/llama_server.go boundedNumPredict
            tokens, reason = tokens[:limit], "length"
        for i, token in enumerate(tokens):
            if i and self.token_delay:
                await asyncio.sleep(self.token_delay)
            if self.mode == "stream_error" and i == min(STREAM_ERROR_AFTER, len(tokens) - 1):
                yield _Error(500, RUNNER_CRASH)  # the runner died mid-answer
                return
            yield self._part(record, token) | {"done": False}
        done = time.monotonic()
        record.update(done_reason=reason, prompt_eval_count=ev.evaluated)
        yield self._part(record, "") | {
            "done": True, "done_reason": reason, "total_duration": int((done - arrived) * 1e9),
            "load_duration": int((loaded - arrived) * 1e9), "prompt_eval_count": ev.evaluated,
            "prompt_eval_duration": int(self.latency * 1e9), "eval_count": len(tokens),
            "eval_duration": int((done - evaluated) * 1e9)}

    def _text(self, model: FakeModel, ev: Evaluation, captions: list[str], fmt) -> str:
        if model.max_images == 1:
            captions = captions[-1:]  # trained on one image: it answers about the last
        plain = "; ".join(captions) if captions else f"You said: {ev.last_user_text()}"
        if isinstance(fmt, dict):
            task = Task.read("\n".join(ev.seen))
            mode = self.mode if self.mode in ("unbounded", "reversed") else "ok"
            return json.dumps(SchemaAnswer(fmt, task, plain, mode).fill())
        return json.dumps({"answer": plain}) if fmt == "json" else plain

    @staticmethod
    def _part(record: dict, text: str) -> dict:
        if record["path"] == "/api/generate":
            return {"model": record["model"], "created_at": _now(), "response": text}
        return {"model": record["model"], "created_at": _now(), "message": {"role": "assistant", "content": text}}

    def _dropped(self) -> None:
        self.cancelled += 1

    # -- model management ------------------------------------------------------------
    async def _tags(self, request: Request) -> Response:
        if refusal := await self._misbehaviour():
            return refusal
        return JSONResponse({"models": [self._listing(self.model(m)) for m in sorted(self.models)]})

    async def _show(self, request: Request) -> Response:
        """server/routes.go ShowHandler, GetModelInfo."""
        if refusal := await self._misbehaviour():
            return refusal
        body = await self._body(request)
        name = body.get("model") or body.get("name") or ""
        if not name:
            return _error(400, "model is required")
        if (model := self.model(name)) is None:
            return _error(404, f"model '{_full_name(name)}' not found")
        params = [(k, v) for k, v in model.parameters] + ([("num_ctx", model.num_ctx)] if model.num_ctx else [])
        parameters = "\n".join(f"{k:<30} {json.dumps(v)}" for k, v in params)
        show = {"modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {model.name}\n",
                "parameters": parameters, "template": "{{ .Prompt }}", "details": self._listing(model)["details"],
                "model_info": {"general.architecture": model.family, "general.basename": model.name.split(":")[0],
                               f"{model.family}.context_length": model.context_length},
                "capabilities": list(model.capabilities), "modified_at": "2024-05-01T10:00:00Z"}
        if model.vision:
            show["projector_info"] = {"clip.has_vision_encoder": True}
        return JSONResponse(show)

    async def _pull(self, request: Request) -> Response:
        """server/routes.go PullHandler, server/images.go PullModel: every failure is an {"error"} line after
        "pulling manifest" (not streamed: a 500)."""
        if refusal := await self._misbehaviour():
            return refusal
        body = await self._body(request)
        name = _full_name(body.get("model") or body.get("name") or "")
        return _Answer(self._pulling(name), stream=body.get("stream") is not False, merge=lambda parts: parts[-1],
                       stopping=self._http.stopping)

    async def _pulling(self, name: str):
        digest = "sha256:" + "ab" * 32
        progress = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": 1000}
        yield {"status": "pulling manifest"}
        failure = self._next_pull_failure()
        if failure is None and self.pullable is not None and name not in self.pullable:
            failure = "missing"
        if failure is not None:
            base, tag = name.rsplit(":", 1)
            if failure == "download":
                yield progress | {"completed": 500}
            repo = base if "/" in base else f"library/{base}"
            yield _Error(500, PULL_FAILURES[failure].format(repo=repo, tag=tag) if failure in PULL_FAILURES
                         else failure)
            return
        for step in (progress | {"completed": 500}, progress | {"completed": 1000},
                     {"status": "verifying sha256 digest"}, {"status": "writing manifest"}):
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            yield step
        self._specs.setdefault(name, _spec(name))
        self.models.add(name)
        yield {"status": "success"}

    def _next_pull_failure(self) -> str | None:
        if isinstance(self.pull_failures, int):
            if self.pull_failures <= 0:
                return None
            self.pull_failures -= 1
            return "network"
        return self.pull_failures.pop(0) if self.pull_failures else None

    async def _version(self, request: Request) -> Response:
        return await self._misbehaviour() or JSONResponse({"version": VERSION})

    @staticmethod
    def _listing(model: FakeModel) -> dict:
        return {"name": model.name, "model": model.name, "modified_at": "2024-05-01T10:00:00Z",
                "size": 1_700_000_000, "digest": "ab" * 32,
                "details": {"parent_model": "", "format": "gguf", "family": model.family,
                            "families": list(model.families or (model.family,)),
                            "parameter_size": model.parameter_size, "quantization_level": "Q4_0"}}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Ollama server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of prompt evaluation per answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--load-time", type=float, default=0.0, help="seconds to load a model")
    parser.add_argument("--num-parallel", type=int, default=NUM_PARALLEL, help="slots per loaded model")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE, help="requests pending a load")
    parser.add_argument("--context-length", type=int, default=CONTEXT_LENGTH, help="default num_ctx")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of answers that are HTTP 500")
    parser.add_argument("--model", action="append", help="known model (repeatable)")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeOllama(args.model or DEFAULT_MODELS, num_parallel=args.num_parallel, max_queue=args.max_queue,
                    context_length=args.context_length, latency=args.latency, token_delay=args.token_delay,
                    load_time=args.load_time, fail_rate=args.fail_rate, host=args.host, port=args.port) as fake:
        print(f"fake Ollama listening on {fake.url}", flush=True)
        while not stop.wait(0.1):
            pass


if __name__ == "__main__":
    main()
