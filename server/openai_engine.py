"""The one module that talks to an OpenAI-compatible model server (vLLM,
SGLang, llama.cpp's llama-server, KServe and the stacks built on them),
through the `openai` package's AsyncOpenAI client: Chat Completions, always
streamed, so the read timeout (`timeout`) measures silence and a separate
`deadline` bounds the whole answer, as for Ollama (server/engine.py).

Such a server as it really is (vllm-project/vllm
vllm/entrypoints/openai/serving_chat.py, serving_models.py; ggml-org/llama.cpp
tools/server/server.cpp):
- it batches the requests of its slots together and queues the rest with
  nothing written back (llama-server `-np`, vLLM `--max-num-seqs`), so the node
  sends no more than `slots` at once and times its own wait for one;
- a prompt longer than the context is refused with a 400 (vLLM: "This model's
  maximum context length is N tokens", llama-server: "the request exceeds the
  available context size"), never cut, so the count it reports after an answer
  (`usage.prompt_tokens`) is the prompt's real length and sharpens the estimate;
- `/v1/models` lists what it serves; vLLM's entry carries `max_model_len` (the
  context it was started with), llama-server's `meta.n_ctx` (a slot's) and
  `n_ctx_train`; the context asked for (`num_ctx`) is capped at it;
- llama-server says what a model takes (`architecture.input_modalities`); vLLM
  does not say whether a model sees images, nor its family: there the VLM role is
  taken to see (the LLM role not), and a VLM takes one image per request unless
  VLM_MAX_IMAGES says more (server/realtime.py), the safe side of vLLM's
  `--limit-mm-per-prompt`;
- an error after the answer started is an SSE event `data: {"error": ...}`
  (vLLM's create_streaming_error_response), raised by the client as APIError;
- it cannot pull a model: it serves the one it was started with.

Every failure leaves as a NodeError naming the role's server and its URL:
unreachable, silent, 5xx, 429 or failing mid-answer: PeerUnavailable; an answer
that is not what the API promises: PeerUnavailable "bad_model_answer"; a model
it does not serve: PeerRefused "model_missing"; a prompt too long: BadInput
"prompt_too_long"; any other 4xx: PeerRefused.
"""

import asyncio
import base64
import contextlib
import socket
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
import pydantic

from server import metrics
from server.config import Role, Settings
from server.engines import (
    ANSWER_RESERVE,
    Answer,
    AnswerFormat,
    Chunk,
    causes,
    count_tokens,
    counting_errors,
    json_object,
    too_long,
)
from server.errors import BadInput, PeerRefused, PeerUnavailable, quoted
from server.model_info import ModelInfo
from server.tokens import TokenEstimator

MODEL_INFO_TTL = 60.0  # seconds the server's list of models is trusted before it is read again
NO_KEY = "EMPTY"  # what vLLM's docs pass when the server wants no key; the client insists on one
# How a server words a prompt over its context (vLLM serving_engine.py, llama.cpp server.cpp
# exceed_context_size_error).
OVERFLOW_MARKERS = ("maximum context length", "exceeds the available context", "context size", "context length")
# Ollama's option names (as the callers give them) and the Chat Completions fields they become;
# the others (num_ctx, num_keep, ...) are the server's own business.
OPTIONS = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop"}
TRANSIENT_REFUSALS = (408, 429)  # 4xx that say "not now": a timeout, or too many requests (KServe, gateways)

def _rfc3339(created: int) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z") if created > 0 else ""


def _detail(e: openai.APIError) -> str:
    """The server's own words: the client keeps the body's "error" object, or the body."""
    body = e.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):  # FastAPI's 404 for an unknown path
        return body["detail"]
    return e.message


def _capabilities(entry: object, assumed: frozenset[str]) -> frozenset[str]:
    """What a listed model takes: llama-server says it (`architecture.input_modalities`,
    tools/server/server.cpp); vLLM does not, and then `assumed`."""
    architecture = getattr(entry, "architecture", None)
    modalities = architecture.get("input_modalities") if isinstance(architecture, dict) else None
    if not isinstance(modalities, list):
        return assumed
    return frozenset({"completion", "vision"} if "image" in modalities else {"completion"})


class OpenAIEngine:
    """One role's OpenAI-compatible server: `model` is the role's (VLM_MODEL or LLM_MODEL)."""

    def __init__(
        self,
        base_url: str,
        *,
        role: Role,
        model: str,
        api_key: str = "",
        slots: int = Settings.vlm_slots,
        timeout: float = Settings.ollama_timeout,
        deadline: float = Settings.ollama_answer_deadline,
        num_ctx: int = Settings.vlm_num_ctx,
        tokens: dict[str, TokenEstimator] | None = None,  # shared by the servers of one model (server/pool.py)
    ):
        self.base_url = base_url
        self.role = role
        self.model = model
        self.slots = slots
        self.timeout = timeout
        self.deadline = deadline
        self.num_ctx = num_ctx
        # No retries in the client: a job's retries are the worker's (JOB_RETRY_FOR), a stream's its own.
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=0)
        self._slots = asyncio.Semaphore(slots)
        self._listed: tuple[float, dict[str, ModelInfo]] | None = None
        self.tokens: dict[str, TokenEstimator] = defaultdict(TokenEstimator) if tokens is None else tokens

    @property
    def name(self) -> str:
        return f"the {self.role}'s OpenAI-compatible server"

    async def __aenter__(self) -> "OpenAIEngine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    def pinned(self) -> "OpenAIEngine":
        return self  # one server: a stream's requests all go to it

    # -- models ------------------------------------------------------------------------
    async def _models(self, *, fresh: bool = False) -> dict[str, ModelInfo]:
        """What /v1/models lists, by id (cached a while unless `fresh`)."""
        if not fresh and self._listed and time.monotonic() - self._listed[0] < MODEL_INFO_TTL:
            return self._listed[1]
        async with self._talking():
            page = await self._client.models.list()
        # Where the server does not say what a model takes, the role says (see the module's docstring).
        assumed = frozenset({"completion", "vision"} if self.role == "VLM" else {"completion"})
        listed = {}
        for entry in page.data:
            meta = getattr(entry, "meta", None) or {}
            # llama-server: `meta.n_ctx` is a slot's context (-c / -np), n_ctx_train the model's own.
            context = getattr(entry, "max_model_len", None) or meta.get("n_ctx") or meta.get("n_ctx_train")
            context = context if isinstance(context, int) and context > 0 else None
            listed[entry.id] = ModelInfo(entry.id, _capabilities(entry, assumed), frozenset(), context)
        self._listed = (time.monotonic(), listed)
        return listed

    async def describe(self, model: str) -> ModelInfo:
        info = (await self._models()).get(model)
        if info is None:
            raise self._model_missing(model)
        return info

    async def window(self, model: str) -> int:
        info = await self.describe(model)
        # The server's context is what it was started with: no floor for vision, unlike Ollama's.
        return min(self.num_ctx, info.context_length) if info.context_length else self.num_ctx

    async def ready(self) -> None:
        """Asks the server now (/ready must see it go), then finds the model in what it lists."""
        if self.model not in await self._models(fresh=True):
            raise self._model_missing(self.model)

    async def check_models(self, pull: bool | None = None) -> list[str]:
        """The model served and fit for its role: a VLM the server lists as
        taking text only is PeerRefused "model_unsuitable", which a process
        should not start with."""
        await self.ready()
        info = await self.describe(self.model)
        if self.role == "VLM" and not info.vision:
            raise PeerRefused(
                f"VLM_MODEL {self.model} cannot see images: {self.name} at {self.base_url} lists it as taking "
                "text only; choose a vision model (llama-server: start it with --mmproj)",
                code="model_unsuitable",
            )
        return []  # nothing to pull: the server serves the model it was started with

    async def fits(self, model: str, prompt: str, images: int = 0, *, answer_tokens: int | None = None) -> bool:
        window = await self.window(model)
        return self.tokens[model].prompt(prompt, images) + (answer_tokens or ANSWER_RESERVE) <= window

    # -- inference ---------------------------------------------------------------------
    async def stream(
        self, prompt: str, images: Sequence[bytes] = (), *, model: str | None = None, options: dict | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """As server/engine.py's: the chunks as written, the last (done) after the slot is freed."""
        final = None
        async with contextlib.aclosing(self._chunks(model or self.model, prompt, images, options or {})) as chunks:
            async for chunk in chunks:
                if chunk.done:
                    final = chunk
                else:
                    yield chunk
        yield final or Chunk("", True)

    async def generate(
        self,
        prompt: str,
        images: Sequence[bytes] = (),
        *,
        model: str | None = None,
        options: dict | None = None,
        format: AnswerFormat = None,
    ) -> Answer:
        text: list[str] = []
        final = Chunk("", False)
        async with contextlib.aclosing(self._chunks(model or self.model, prompt, images, options or {}, format)) as chunks:
            async for chunk in chunks:
                text.append(chunk.text)
                final = chunk
        assert final.done
        counts = final.metrics
        return Answer("".join(text), counts.get("prompt_eval_count", 0), counts.get("eval_count", 0), final.done_reason)

    async def caption(self, image_jpeg: bytes, prompt: str, *, options: dict | None = None) -> str:
        return (await self.generate(prompt, [image_jpeg], options=options)).text.strip()

    async def complete_json(
        self, prompt: str, schema: dict, *, model: str | None = None, options: dict | None = None
    ) -> dict:
        answer = await self.generate(prompt, model=model, options=options, format=schema)
        try:
            return json_object(answer)
        except ValueError as e:
            raise self._bad_answer(str(e)) from None

    def _request(self, model: str, prompt: str, images: Sequence[bytes], options: dict, format: AnswerFormat) -> dict:
        """The Chat Completions request: images as data URIs before the text, options by their OpenAI names."""
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(image).decode()}}
            for image in images
        ]
        content.append({"type": "text", "text": prompt})
        request: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "stream": True,
            "stream_options": {"include_usage": True},  # the prompt's real length, on the last chunk
        }
        request |= {OPTIONS[k]: v for k, v in options.items() if k in OPTIONS and v is not None}
        if isinstance(format, dict):
            request["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": format}}
        elif format == "json":
            request["response_format"] = {"type": "json_object"}
        return request

    async def _chunks(
        self, model: str, prompt: str, images: Sequence[bytes], options: dict, format: AnswerFormat = None
    ) -> AsyncGenerator[Chunk, None]:
        """One streamed chat completion under a slot; the last chunk is done and carries the counts."""
        info = await self.describe(model)
        if images and not info.vision:
            raise PeerRefused(f"model {quoted(model)} cannot see images ({self.name} at {self.base_url})",
                              code="model_unsuitable")
        window = await self.window(model)
        estimator = self.tokens[model]
        need = estimator.prompt(prompt, len(images))
        limit = options.get("num_predict")
        if need + (limit if isinstance(limit, int) and limit > 0 else ANSWER_RESERVE) > window:
            raise too_long(model, need, len(images), window)
        request = self._request(model, prompt, images, options, format)
        waiting = time.perf_counter()
        async with self._slots:
            metrics.OLLAMA_SLOT_WAIT.labels(model).observe(time.perf_counter() - waiting)
            started = time.perf_counter()
            try:
                async with self._talking(model, images=len(images)):
                    deadline = time.monotonic() + self.deadline
                    stream = await self._client.chat.completions.create(**request)
                    reason, usage, created = "", None, 0
                    async with stream:  # closed, it ends the request, and the server frees the slot
                        async for part in stream:
                            created = part.created or created
                            usage = part.usage or usage
                            for choice in part.choices[:1]:
                                reason = choice.finish_reason or reason
                                if text := choice.delta.content if choice.delta else None:
                                    yield Chunk(text, False, part.model or model, _rfc3339(part.created))
                            if time.monotonic() > deadline:
                                raise PeerUnavailable(
                                    f"{self.name} at {self.base_url} did not finish an answer within {self.deadline:g} s",
                                    code="answer_too_slow",
                                )
                    if not reason:
                        raise self._bad_answer("the answer ended before it was done")
            finally:
                metrics.OLLAMA_SECONDS.labels(model).observe(time.perf_counter() - started)
        counts = {"total_duration": int((time.perf_counter() - started) * 1e9)}
        if usage is not None:
            estimator.observe(prompt, len(images), usage.prompt_tokens, window=window)
            count_tokens(model, usage.prompt_tokens, usage.completion_tokens)
            counts |= {"prompt_eval_count": usage.prompt_tokens, "eval_count": usage.completion_tokens}
        yield Chunk("", True, model, _rfc3339(created), reason, {k: v for k, v in counts.items() if v > 0})

    # -- errors ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _talking(self, model: str | None = None, *, images: int = 0) -> AsyncIterator[None]:
        """Any request: its failure counted by model, as one of our errors."""
        async with counting_errors(model), self._translating(model, images=images):
            yield

    @contextlib.asynccontextmanager
    async def _translating(self, model: str | None = None, *, images: int = 0) -> AsyncIterator[None]:
        """Turn whatever the client raises into our errors."""
        where = f"{self.name} at {self.base_url}"
        try:
            yield
        except openai.APIStatusError as e:
            status, detail = e.status_code, _detail(e)
            if status == 404 and model:
                raise self._model_missing(model, detail) from e
            if status == 400 and any(m in detail for m in OVERFLOW_MARKERS):
                if model:
                    self.tokens[model].overflowed(images)
                raise BadInput(f"the prompt does not fit the context of {model}: {detail}", code="prompt_too_long") from e
            if 400 <= status < 500 and status not in TRANSIENT_REFUSALS:
                raise PeerRefused(f"{where} refused the request: {detail} (HTTP {status})") from e
            raise PeerUnavailable(f"{where} failed: {detail} (HTTP {status})") from e
        except openai.APIConnectionError as e:  # its timeout too
            raise PeerUnavailable(f"{self.name} is not reachable at {self.base_url}: {self._reason(e)}") from e
        except openai.APIError as e:  # an {"error"} event after the answer had started
            raise PeerUnavailable(f"{where} failed mid-answer: {_detail(e)}") from e
        except (pydantic.ValidationError, ValueError) as e:  # a chunk that is not JSON, or not a chunk
            raise self._bad_answer(str(e).splitlines()[0] if str(e) else type(e).__name__) from e

    def _reason(self, exc: BaseException) -> str:
        found = list(causes(exc))
        for types, reason in (
            ((ConnectionRefusedError,), "connection refused"),
            ((socket.gaierror,), "unknown host"),
            ((httpx2.ConnectTimeout,), f"no connection within {self.timeout:g} s"),
            ((httpx2.RemoteProtocolError,), "the connection was closed mid-answer"),
            ((ConnectionResetError,), "the connection was reset"),
            ((httpx2.TimeoutException, TimeoutError), f"nothing heard for {self.timeout:g} s"),
            ((httpx2.ConnectError,), "no connection"),
        ):
            if any(isinstance(e, types) for e in found):
                return reason
        return str(exc) or type(exc).__name__

    def _model_missing(self, model: str, detail: str = "") -> PeerRefused:
        said = f": {detail}" if detail else ""
        return PeerRefused(
            f"model {quoted(model)} is not served by {self.name} at {self.base_url}{said}", code="model_missing"
        )

    def _bad_answer(self, detail: str) -> PeerUnavailable:
        return PeerUnavailable(f"{self.name} at {self.base_url} gave an invalid answer: {detail}", code="bad_model_answer")
