"""The one module that talks to Ollama, the node's default engine (server/engines.py
says what an engine does; server/openai_engine.py is the other), through the
`ollama` client's AsyncClient, its requests carried by aiohttp (see `_reason`
for what that means for errors).

Ollama as it really is (ollama/ollama v0.32, see REAL-PEERS.md):
- it answers OLLAMA_NUM_PARALLEL requests per model (default 1) and queues the
  rest with nothing written back, so the node takes a slot per model before it
  asks (`num_parallel`, the same number), and times the wait apart;
- `stream: false` writes nothing until the answer is complete, so every request
  here streams: the read timeout (`timeout`) then measures silence, and a
  separate `deadline` bounds the whole answer;
- a prompt longer than the context is cut from the front, silently, so each
  request asks for a fixed context (`num_ctx`, the same for every request to a
  model, since a different one reloads it) and is refused here when our
  estimate says it would not fit (`server/tokens.py`);
- a model without vision ignores images, so `describe` reads capabilities and
  the trained context from /api/show, and images go only to a model that sees;
- a model that is missing is pulled (OLLAMA_PULL), as the original did per job.

Every failure leaves as a NodeError that names Ollama and its host:
- Ollama down, slow, busy or answering 5xx, or failing mid-answer: PeerUnavailable
  (transient, worth retrying); an answer that is not what the API promises:
  PeerUnavailable code "bad_model_answer";
- a model Ollama does not have and cannot pull: PeerRefused code "model_missing";
  a model that cannot do what is asked: PeerRefused code "model_unsuitable";
- a prompt too long for the model's context: BadInput code "prompt_too_long";
- any other 4xx: PeerRefused.
"""

import asyncio
import contextlib
import socket
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import cast

import aiohttp
import httpx
import httpx_aiohttp
import ollama

from server import metrics
from server.config import Settings
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
from server.retry import RetryStrategy
from server.tokens import TokenEstimator, looks_cut

SPARE_CONNECTIONS = 4  # beyond the slots: for probes and pulls, which take no slot
MODEL_INFO_TTL = 60.0  # seconds a model's description is trusted before it is read again
PULL_RETRY = RetryStrategy(max_attempts=3, wait=2.0)
# Pull failures that trying again will not mend: the registry has no such model
# (server/images.go: "pull model manifest: file does not exist") or the name is bad.
PULL_REFUSALS = ("file does not exist", "manifest unknown", "invalid model name")
# What llama-server says when a prompt with images does not fit (Ollama passes it on).
OVERFLOW_MARKERS = ("exceeds the available context", "context size", "context length")


def _full_name(model: str) -> str:
    """Ollama's name for a model: 'llama3' and 'llama3:latest' are the same model."""
    return model if ":" in model else f"{model}:latest"


# Ollama's counts on the last part of an answer (api/types.go Metrics): tokens, and durations in nanoseconds.
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")


def _chunk(part: ollama.GenerateResponse) -> Chunk:
    """A part of Ollama's answer, with what it said of it."""
    metrics = {name: value for name in METRICS if isinstance(value := getattr(part, name, None), int) and value > 0}
    return Chunk(part.response or "", bool(part.done), part.model or "", part.created_at or "", part.done_reason or "", metrics)


class OllamaEngine:
    def __init__(
        self,
        host: str,
        *,
        vlm_model: str = "",  # empty: the role is served elsewhere (server/engines.py Engines)
        llm_model: str = "",
        num_parallel: int = Settings.ollama_num_parallel,
        timeout: float = Settings.ollama_timeout,
        deadline: float = Settings.ollama_answer_deadline,
        vlm_num_ctx: int = Settings.vlm_num_ctx,
        llm_num_ctx: int = Settings.llm_num_ctx,
        pull: bool = Settings.ollama_pull,
        pull_retry: RetryStrategy = PULL_RETRY,
        tokens: dict[str, TokenEstimator] | None = None,  # shared by the servers of one model (server/pool.py)
    ):
        self.host = host
        self.vlm_model = vlm_model
        self.llm_model = llm_model
        self.num_parallel = num_parallel
        self.timeout = timeout
        self.deadline = deadline
        self.pull = pull
        self.pull_retry = pull_retry
        self._models = tuple(dict.fromkeys(m for m in (vlm_model, llm_model) if m))  # those it serves
        self._num_ctx = {_full_name(llm_model): llm_num_ctx} if llm_model else {}
        self._vlm_num_ctx = vlm_num_ctx
        # aiohttp keeps a connection alive for every slot (httpx kept 20 and
        # opened and closed the rest with every answer); requests still go
        # through the ollama client and httpx's timeouts.
        transport = httpx_aiohttp.AiohttpTransport(limits=httpx.Limits(max_connections=num_parallel * 2 + SPARE_CONNECTIONS))
        self._client = ollama.AsyncClient(host=host, timeout=timeout, transport=transport)
        self._slots: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(num_parallel))
        self._described: dict[str, tuple[float, ModelInfo]] = {}
        self._pulls: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.tokens: dict[str, TokenEstimator] = (  # by full model name
            defaultdict(TokenEstimator) if tokens is None else tokens
        )

    async def __aenter__(self) -> "OllamaEngine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    def pinned(self) -> "OllamaEngine":
        return self  # one server: a stream's requests all go to it

    # -- models ------------------------------------------------------------------------
    async def describe(self, model: str) -> ModelInfo:
        """What the model can do and how much it reads, from /api/show (cached a while)."""
        name = _full_name(model)
        cached = self._described.get(name)
        if cached and time.monotonic() - cached[0] < MODEL_INFO_TTL:
            return cached[1]
        async with self._talking(model):
            shown = await self._client.show(name)
        info = ModelInfo.from_show(name, shown.capabilities, shown.details, shown.modelinfo)
        self._described[name] = (time.monotonic(), info)
        return info

    async def window(self, model: str) -> int:
        """Tokens of context every request to `model` asks for (and gets)."""
        name = _full_name(model)
        return (await self.describe(name)).window(self._num_ctx.get(name, self._vlm_num_ctx))

    async def ready(self) -> None:
        """Raises unless Ollama answers now and both models are there and fit for their work."""
        present = await self._present()
        for model in self._models:
            if _full_name(model) not in present:
                raise self._model_missing(model)
            self._check_fit(await self.describe(model))

    async def _present(self) -> set[str]:
        async with self._talking():
            listing = await self._client.list()
        return {_full_name(m.model) for m in listing.models if m.model}

    async def check_models(self, pull: bool | None = None) -> list[str]:
        """Make sure both models are on Ollama (pulling the missing ones) and fit for
        their work; returns those pulled. A model unfit for its work is PeerRefused
        "model_unsuitable", which a process should not start with."""
        pulled = []
        for model in self._models:
            if await self.ensure_model(model, pull=self.pull if pull is None else pull):
                pulled.append(model)
            self._check_fit(await self.describe(model))
        return pulled

    async def ensure_model(self, model: str, *, pull: bool = True) -> bool:
        """True when the model had to be pulled. One pull at a time per model."""
        name = _full_name(model)
        async with self._pulls[name]:
            if name in await self._present():
                return False
            if not pull:
                raise self._model_missing(model)
            await self._pull(name)
            self._described.pop(name, None)
            return True

    def _check_fit(self, info: ModelInfo) -> None:
        if self.vlm_model and info.name == _full_name(self.vlm_model) and not info.vision:
            raise PeerRefused(
                f"VLM_MODEL {info.name} cannot see images: Ollama at {self.host} lists its capabilities as "
                f"{', '.join(sorted(info.capabilities)) or 'none'}; choose a vision model",
                code="model_unsuitable",
            )
        if self.llm_model and info.name == _full_name(self.llm_model) and info.capabilities and "completion" not in info.capabilities:
            raise PeerRefused(f"LLM_MODEL {info.name} cannot complete text", code="model_unsuitable")

    async def _pull(self, model: str) -> None:
        for attempt in range(1, self.pull_retry.max_attempts + 1):
            try:
                async with self._talking(model):
                    try:
                        async for _progress in await self._client.pull(model, stream=True):
                            pass
                    except ollama.ResponseError as e:  # failures arrive as a streamed {"error"} line
                        refused = any(m in e.error for m in PULL_REFUSALS) or 400 <= e.status_code < 500
                        if refused:
                            raise PeerRefused(
                                f"could not pull model {quoted(model)} on Ollama at {self.host}: {e.error}",
                                code="model_missing",
                            ) from e
                        raise PeerUnavailable(f"could not pull model {quoted(model)} on Ollama at {self.host}: {e.error}") from e
                return
            except PeerUnavailable:
                if not self.pull_retry.should_retry(attempt):
                    raise
                await asyncio.sleep(self.pull_retry.delay(attempt))

    # -- inference ---------------------------------------------------------------------
    async def stream(
        self, prompt: str, images: Sequence[bytes] = (), *, model: str | None = None, options: dict | None = None
    ) -> AsyncGenerator[Chunk, None]:
        """Yield the answer's chunks as the model writes them; the last has done set.

        Cancelling the consuming task closes the HTTP request, which stops Ollama. A consumer
        that stops early should close the iterator (`contextlib.aclosing`) to free its slot at once.
        """
        final = None
        async with contextlib.aclosing(self._parts(model or self.vlm_model, prompt, images, options)) as parts:
            async for part in parts:
                if part.done:
                    final = _chunk(part)
                else:
                    yield _chunk(part)
        yield final or Chunk("", True)  # after the slot is freed, so a consumer that stops here holds nothing

    async def generate(
        self,
        prompt: str,
        images: Sequence[bytes] = (),
        *,
        model: str | None = None,
        options: dict | None = None,
        format: AnswerFormat = None,
    ) -> Answer:
        """The whole answer, streamed under the hood (see the module's docstring)."""
        text: list[str] = []
        final = None
        async with contextlib.aclosing(self._parts(model or self.vlm_model, prompt, images, options, format)) as parts:
            async for part in parts:
                text.append(part.response or "")
                final = part
        assert final is not None and final.done
        return Answer("".join(text), final.prompt_eval_count or 0, final.eval_count or 0, final.done_reason or "")

    async def caption(self, image_jpeg: bytes, prompt: str, *, options: dict | None = None) -> str:
        """The VLM's whole answer about one image."""
        return (await self.generate(prompt, [image_jpeg], model=self.vlm_model, options=options)).text.strip()

    async def complete_json(
        self, prompt: str, schema: dict, *, model: str | None = None, options: dict | None = None
    ) -> dict:
        """Ask the LLM for an answer shaped by the JSON `schema`, and parse it."""
        answer = await self.generate(prompt, model=model or self.llm_model, options=options, format=schema)
        try:
            return json_object(answer)
        except ValueError as e:
            raise self._bad_answer(str(e)) from None

    async def fits(self, model: str, prompt: str, images: int = 0, *, answer_tokens: int | None = None) -> bool:
        """Whether the prompt, by our estimate, leaves room for the answer in the model's context."""
        window = await self.window(model)
        return self.tokens[_full_name(model)].prompt(prompt, images) + (answer_tokens or ANSWER_RESERVE) <= window

    async def _parts(
        self, model: str, prompt: str, images: Sequence[bytes], options: dict | None, format: AnswerFormat = None
    ) -> AsyncGenerator[ollama.GenerateResponse, None]:
        """One streamed /api/generate, under a slot of the model; a model that went
        missing is pulled and asked once more (before anything was written)."""
        name = _full_name(model)
        for attempt in (1, 2):
            started = False
            try:
                info = await self.describe(name)
                async for part in self._generate(info, prompt, images, dict(options or {}), format):
                    started = True
                    yield part
                return
            except PeerRefused as exc:
                if exc.code != "model_missing" or not self.pull or attempt == 2 or started:
                    raise
                self._described.pop(name, None)
                await self.ensure_model(name)

    async def _generate(
        self, info: ModelInfo, prompt: str, images: Sequence[bytes], options: dict, format: AnswerFormat
    ) -> AsyncGenerator[ollama.GenerateResponse, None]:
        model = info.name
        if images and not info.vision:
            raise PeerRefused(f"model {quoted(model)} cannot see images (Ollama at {self.host})", code="model_unsuitable")
        window = info.window(self._num_ctx.get(model, self._vlm_num_ctx))
        estimator = self.tokens[model]
        need = estimator.prompt(prompt, len(images))
        limit = options.get("num_predict")
        answer_tokens = limit if isinstance(limit, int) and limit > 0 else ANSWER_RESERVE
        if need + answer_tokens > window:
            raise too_long(model, need, len(images), window)
        options["num_ctx"] = window
        waiting = time.perf_counter()
        async with self._slots[model]:
            metrics.OLLAMA_SLOT_WAIT.labels(model).observe(time.perf_counter() - waiting)
            async with self._timed(model, images=len(images)):
                deadline = time.monotonic() + self.deadline
                parts = await self._client.generate(
                    model, prompt, images=list(images) or None, options=options, format=format or None, stream=True
                )
                # The client's stream is an async generator (typed as an iterator): closed, it ends the request.
                async with contextlib.aclosing(cast(AsyncGenerator[ollama.GenerateResponse, None], parts)):
                    async for part in parts:
                        if part.done:
                            counted = part.prompt_eval_count or 0
                            if not images and need >= window // 2 and looks_cut(counted, window):
                                # Ollama read no more of it than a cut leaves: longer than estimated.
                                estimator.overflowed(0)
                                raise BadInput(
                                    f"Ollama at {self.host} cut a prompt for {model} to {counted} tokens: it was "
                                    f"longer than the {need} estimated",
                                    code="prompt_too_long",
                                )
                            estimator.observe(prompt, len(images), counted, window=window)
                            count_tokens(model, counted, part.eval_count or 0)
                            yield part
                            return
                        if time.monotonic() > deadline:
                            raise PeerUnavailable(
                                f"Ollama at {self.host} did not finish an answer within {self.deadline:g} s",
                                code="answer_too_slow",
                            )
                        yield part
        raise self._bad_answer("the answer ended before it was done")

    # -- errors ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _timed(self, model: str, *, images: int = 0) -> AsyncIterator[None]:
        """An answer: timed by model, and its failure counted."""
        started = time.perf_counter()
        try:
            async with self._talking(model, images=images):
                yield
        finally:
            metrics.OLLAMA_SECONDS.labels(model).observe(time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def _talking(self, model: str | None = None, *, images: int = 0) -> AsyncIterator[None]:
        """Any request: its failure counted by model, as one of our errors."""
        async with counting_errors(model), self._translating(model, images=images):
            yield

    @contextlib.asynccontextmanager
    async def _translating(self, model: str | None = None, *, images: int = 0) -> AsyncIterator[None]:
        """Turn whatever the client or httpx raises into our errors."""
        try:
            yield
        except ollama.ResponseError as e:
            status = e.status_code
            if status == 404 and model:
                raise self._model_missing(model) from e
            if status == 400 and model and any(m in e.error for m in OVERFLOW_MARKERS):
                self.tokens[_full_name(model)].overflowed(images)
                raise BadInput(f"the prompt does not fit the context of {model}: {e.error}", code="prompt_too_long") from e
            if 400 <= status < 500:
                raise PeerRefused(f"Ollama at {self.host} refused the request: {e.error} (HTTP {status})") from e
            if status < 0:  # an {"error"} line after the answer had started (server/routes.go, streamResponse)
                raise PeerUnavailable(f"Ollama at {self.host} failed mid-answer: {e.error}") from e
            raise PeerUnavailable(f"Ollama at {self.host} failed: {e.error} (HTTP {status})") from e
        except (httpx.RequestError, ConnectionError) as e:  # the client turns httpx.ConnectError into ConnectionError
            raise PeerUnavailable(f"Ollama is not reachable at {self.host}: {self._reason(e)}") from e
        except ValueError as e:  # a body that is not JSON, or JSON that does not fit the API (pydantic)
            raise self._bad_answer(str(e).splitlines()[0] if str(e) else type(e).__name__) from e

    def _reason(self, exc: BaseException) -> str:
        # Judged by the root causes: the transport's mapping of aiohttp's
        # errors to httpx's is coarse (a refused connection becomes a
        # ConnectTimeout), so the most telling cause in the chain wins.
        found = list(causes(exc))
        for types, reason in (
            ((ConnectionRefusedError,), "connection refused"),
            ((socket.gaierror, aiohttp.ClientConnectorDNSError), "unknown host"),
            ((aiohttp.ConnectionTimeoutError,), f"no connection within {self.timeout:g} s"),
            ((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError), "the connection was closed mid-answer"),
            ((ConnectionResetError,), "the connection was reset"),
            ((TimeoutError,), f"nothing heard for {self.timeout:g} s"),
        ):
            if any(isinstance(e, types) for e in found):
                return reason
        return str(exc) or type(exc).__name__

    def _model_missing(self, model: str) -> PeerRefused:
        return PeerRefused(f"model {quoted(model)} is not available on Ollama at {self.host}", code="model_missing")

    def _bad_answer(self, detail: str) -> PeerUnavailable:
        return PeerUnavailable(f"Ollama at {self.host} gave an invalid answer: {detail}", code="bad_model_answer")
