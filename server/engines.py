"""What the node asks of a model server, whichever API it speaks: `Engine`,
met by Ollama's native API (server/engine.py) and by the OpenAI-compatible
Chat Completions API of vLLM, SGLang or llama-server (server/openai_engine.py);
and the answers they give (`Chunk`, `Answer`). server/pool.py puts the servers
of one role behind one Engine; server/peers.py builds them.
"""

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from server import metrics
from server.errors import BadInput, NodeError
from server.model_info import ModelInfo
from server.tokens import TokenEstimator

AnswerFormat = dict[str, Any] | Literal["json"] | None  # a JSON schema the answer must fit, or any JSON
ANSWER_RESERVE = 512  # tokens kept free for an answer whose length the caller did not bound


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer, with what the model server said of it."""

    text: str
    done: bool
    model: str = ""
    created_at: str = ""  # RFC 3339
    done_reason: str = ""  # on the last: "stop", or "length" when the token limit cut the answer
    # On the last: counts named as Ollama's (server/engine.py METRICS): tokens, and durations in nanoseconds.
    metrics: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int  # as the server counted them
    tokens: int  # written
    done_reason: str  # "stop", or "length" when the token limit cut it


def json_object(answer: Answer) -> dict:
    """The answer read as the JSON object it was asked to be; ValueError saying why not."""
    try:
        value = json.loads(answer.text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        cut = " (cut at its length limit)" if answer.done_reason == "length" else ""
        raise ValueError(f"expected a JSON object{cut}, got {answer.text[:80]!r}")
    return value


@contextlib.asynccontextmanager
async def counting_errors(model: str | None) -> AsyncIterator[None]:
    """Each of our errors a request ends in, counted by model and code."""
    try:
        yield
    except NodeError as e:
        metrics.OLLAMA_ERRORS.labels(model or "", e.code).inc()
        raise


def count_tokens(model: str, prompt: int, answer: int) -> None:
    """An answer's tokens, as the server counted them."""
    metrics.MODEL_TOKENS.labels(model, "prompt").inc(prompt)
    metrics.MODEL_TOKENS.labels(model, "answer").inc(answer)


def too_long(model: str, need: int, images: int, window: int) -> BadInput:
    """A prompt refused before it is sent: by our estimate it leaves no room for the answer."""
    with_images = f" with {images} image(s)" if images else ""
    return BadInput(
        f"the prompt{with_images} takes about {need} tokens and its answer more, but {model} reads {window}",
        code="prompt_too_long",
    )


def causes(exc: BaseException) -> Iterator[BaseException]:
    """exc, what it was raised from or during, and the members of exception groups, depth first:
    a client's error says little, its root causes (a refused connection, a timeout) say why."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


class Engine(Protocol):
    """One model server (or one role's), as the realtime path and the worker use it.

    `options` are Ollama's names (`num_predict`, `temperature`); an engine
    that speaks another API translates them. Every failure is a NodeError.
    """

    @property
    def tokens(self) -> Mapping[str, TokenEstimator]:
        """Each model's estimates (made on first use), sharpened by each answer."""
        ...

    async def describe(self, model: str) -> ModelInfo: ...

    async def window(self, model: str) -> int:
        """Tokens of context every request to `model` has."""
        ...

    async def fits(self, model: str, prompt: str, images: int = 0, *, answer_tokens: int | None = None) -> bool: ...

    def stream(
        self, prompt: str, images: Sequence[bytes] = (), *, model: str | None = None, options: dict | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """The answer's chunks as the model writes them, the last with done set; closing it frees the slot."""
        ...

    async def caption(self, image_jpeg: bytes, prompt: str, *, options: dict | None = None) -> str: ...

    async def complete_json(
        self, prompt: str, schema: dict, *, model: str | None = None, options: dict | None = None
    ) -> dict: ...

    async def ready(self) -> None:
        """Raises unless the server answers now and its models are there and fit for their work."""
        ...

    async def check_models(self, pull: bool | None = None) -> list[str]:
        """At start: the models there (pulled where the server can), fit for their work; returns those pulled."""
        ...

    def pinned(self) -> "Engine":
        """The engine for one realtime stream: its requests go to one server while that one is well."""
        ...

    async def aclose(self) -> None: ...
