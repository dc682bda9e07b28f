"""The one module that talks to Ollama (through the `ollama` client's AsyncClient,
its requests carried by aiohttp: see `_reason` for what that means for errors).

Every failure leaves as a NodeError that names Ollama and its host:
- Ollama down, slow (no progress within `timeout`) or answering 5xx: PeerUnavailable
  (transient, worth retrying);
- an answer that is not what the API promises: PeerUnavailable code "bad_model_answer";
- a model Ollama does not have: PeerRefused code "model_missing";
- any other 4xx: PeerRefused.

At most `max_concurrency` requests run at once; the others wait for a slot.
"""

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import aiohttp
import httpx
import httpx_aiohttp
import ollama

from server import metrics
from server.errors import NodeError, PeerRefused, PeerUnavailable

DEFAULT_TIMEOUT = 120.0  # seconds; per network step (connect, each read), not per whole answer
DEFAULT_CONCURRENCY = 4  # requests to Ollama at once
SPARE_CONNECTIONS = 4  # beyond the slots: for probes and pulls, which take no slot


def _full_name(model: str) -> str:
    """Ollama's name for a model: 'llama3' and 'llama3:latest' are the same model."""
    return model if ":" in model else f"{model}:latest"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc, what it was raised from or during, and the members of exception groups, depth first."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


class OllamaEngine:
    def __init__(
        self,
        host: str,
        *,
        vlm_model: str,
        llm_model: str,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        self.host = host
        self.vlm_model = vlm_model
        self.llm_model = llm_model
        self.timeout = timeout
        # aiohttp keeps a connection alive for every slot (httpx kept 20 and
        # opened and closed the rest with every answer); requests still go
        # through the ollama client and httpx's timeouts.
        transport = httpx_aiohttp.AiohttpTransport(limits=httpx.Limits(max_connections=max_concurrency + SPARE_CONNECTIONS))
        self._client = ollama.AsyncClient(host=host, timeout=timeout, transport=transport)
        self._slots = asyncio.Semaphore(max_concurrency)

    async def __aenter__(self) -> "OllamaEngine":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    # -- readiness and models --------------------------------------------------------
    async def version(self) -> str:
        """Ollama's version; a cheap readiness probe (takes no concurrency slot)."""
        async with self._talking():
            # The client has no call for /api/version; _request_raw is its own request helper.
            answer = (await self._client._request_raw("GET", "/api/version")).json()
        if not isinstance(answer, dict) or not isinstance(answer.get("version"), str):
            raise self._bad_answer(f"no version in {str(answer)[:80]!r}")
        return answer["version"]

    async def check_models(self, pull: bool = True) -> list[str]:
        """Make sure both models are on Ollama, pulling the missing ones; returns those pulled."""
        async with self._talking():
            listing = await self._client.list()
        present = {_full_name(m.model) for m in listing.models if m.model}
        missing = [m for m in dict.fromkeys((self.vlm_model, self.llm_model)) if _full_name(m) not in present]
        for model in missing:
            if not pull:
                raise self._model_missing(model)
            await self._pull(model)
        return missing

    async def _pull(self, model: str) -> None:
        async with self._talking(model):
            try:
                async for _progress in await self._client.pull(model, stream=True):
                    pass
            except ollama.ResponseError as e:
                if e.status_code >= 500:
                    raise  # Ollama itself is failing: transient
                raise PeerRefused(
                    f"could not pull model '{model}' on Ollama at {self.host}: {e.error}", code="model_missing"
                ) from e

    # -- inference ---------------------------------------------------------------------
    async def stream(
        self,
        prompt: str,
        images: Sequence[bytes] = (),
        *,
        model: str | None = None,
        options: dict | None = None,
    ) -> AsyncIterator[tuple[str, bool]]:
        """Yield (text chunk, done) as the model answers; the last item has done=True.

        Cancelling the consuming task closes the HTTP request, which stops Ollama. A consumer
        that stops early should close the iterator (`contextlib.aclosing`) to free its slot at once.
        """
        model = model or self.vlm_model
        final = None
        async with self._slots, self._talking(model):
            parts = await self._client.generate(
                model, prompt, images=list(images) or None, options=options, stream=True
            )
            async with contextlib.aclosing(parts):
                async for part in parts:
                    if part.done:
                        final = part.response or ""
                    else:
                        yield part.response or "", False
        if final is None:
            raise self._bad_answer("the answer ended before it was done")
        yield final, True  # after the slot is freed, so a consumer that stops here holds nothing

    async def caption(self, image_jpeg: bytes, prompt: str, *, options: dict | None = None) -> str:
        """The VLM's whole answer about one image."""
        return (await self._generate(self.vlm_model, prompt, images=[image_jpeg], options=options)).strip()

    async def complete_json(
        self, prompt: str, schema: dict, *, model: str | None = None, options: dict | None = None
    ) -> dict:
        """Ask the LLM for an answer shaped by the JSON `schema`, and parse it."""
        text = await self._generate(model or self.llm_model, prompt, format=schema, options=options)
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise self._bad_answer(f"expected a JSON object, got {text[:80]!r}")
        return value

    async def _generate(self, model: str, prompt: str, **kwargs) -> str:
        async with self._slots, self._talking(model):
            answer = await self._client.generate(model, prompt, stream=False, **kwargs)
        return answer.response or ""

    # -- errors ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _talking(self, model: str | None = None):
        """Times the request and counts its failure, by model."""
        started = time.perf_counter()
        try:
            async with self._translating(model):
                yield
        except NodeError as e:
            metrics.OLLAMA_ERRORS.labels(model or "", e.code).inc()
            raise
        finally:
            metrics.OLLAMA_SECONDS.labels(model or "").observe(time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def _translating(self, model: str | None = None):
        """Turn whatever the client or httpx raises into our errors."""
        try:
            yield
        except ollama.ResponseError as e:
            status = e.status_code
            if status == 404 and model:
                raise self._model_missing(model) from e
            if 400 <= status < 500:
                raise PeerRefused(f"Ollama at {self.host} refused the request: {e.error} (HTTP {status})") from e
            suffix = f" (HTTP {status})" if status > 0 else ""
            raise PeerUnavailable(f"Ollama at {self.host} failed: {e.error}{suffix}") from e
        except (httpx.RequestError, ConnectionError) as e:  # the client turns httpx.ConnectError into ConnectionError
            raise PeerUnavailable(f"Ollama is not reachable at {self.host}: {self._reason(e)}") from e
        except ValueError as e:  # a body that is not JSON, or JSON that does not fit the API (pydantic)
            raise self._bad_answer(str(e).splitlines()[0] if str(e) else type(e).__name__) from e

    def _reason(self, exc: BaseException) -> str:
        # Judged by the root causes: the transport's mapping of aiohttp's
        # errors to httpx's is coarse (a refused connection becomes a
        # ConnectTimeout), so the most telling cause in the chain wins.
        causes = list(_causes(exc))
        for types, reason in (
            ((ConnectionRefusedError,), "connection refused"),
            ((socket.gaierror, aiohttp.ClientConnectorDNSError), "unknown host"),
            ((aiohttp.ConnectionTimeoutError,), f"no connection within {self.timeout:g} s"),
            ((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError), "the connection was closed mid-answer"),
            ((ConnectionResetError,), "the connection was reset"),
            ((TimeoutError,), f"no answer within {self.timeout:g} s"),
        ):
            if any(isinstance(e, types) for e in causes):
                return reason
        return str(exc) or type(exc).__name__

    def _model_missing(self, model: str) -> PeerRefused:
        return PeerRefused(f"model '{model}' is not available on Ollama at {self.host}", code="model_missing")

    def _bad_answer(self, detail: str) -> PeerUnavailable:
        return PeerUnavailable(f"Ollama at {self.host} gave an invalid answer: {detail}", code="bad_model_answer")
