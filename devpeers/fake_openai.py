"""A fake OpenAI-compatible model server: a real HTTP server modelled on vLLM
(vllm-project/vllm, vllm/entrypoints/openai/: serving_chat.py, serving_engine.py,
serving_models.py, api_server.py) and llama.cpp's llama-server
(ggml-org/llama.cpp tools/server/server.cpp), read from their sources and never
kinder than them, for the real `openai` client. Each behaviour names the file
it comes from.

What that means for a caller: `slots` requests are decoded together
(continuous batching: each goes at its own pace, none waits for another),
those beyond them queue with nothing written back (llama-server `-np` and its
deferred tasks, vLLM `--max-num-seqs` and its waiting queue); a prompt over the
context is refused with a 400 before anything is streamed, never cut; images
are counted against the context and refused beyond the model's limit or by a
model without vision; a client that goes away has its request aborted and its
slot freed at once; an error after the stream began is an SSE event.

Answers follow the input as the fake Ollama's do (devpeers/fake_ollama.py, whose
readers of images, timelines and JSON schemas this shares): an image is
described by size and dominant colour, a text prompt echoed ("You said: ..."),
a JSON schema filled from the prompt's timeline.

    with FakeOpenAI(slots=8) as fake:
        openai.OpenAI(base_url=fake.url, api_key="EMPTY").chat.completions.create(...)

Standalone: python -m devpeers.fake_openai --port 8000 --slots 8 --token-delay 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devpeers.fake_ollama import SchemaAnswer, Task, count_tokens, describe_image
from devpeers.http_server import HANG_POLL, Peer, ThreadedServer

SLOTS = 4  # llama-server's -np when not given (-1: auto, 4 slots); vLLM's max_num_seqs is larger
TEMPLATE_TOKENS = 12  # a chat template's role markers around one user message (both servers apply the model's)
STREAM_ERROR_AFTER = 3  # tokens a "stream_error" answer writes before its error event
DATA_URI = re.compile(r"data:image/[a-z.+-]+;base64,(.*)", re.DOTALL)


@dataclass(frozen=True)
class ServedModel:
    """What the server serves: `context_length` is vLLM's max_model_len (llama-server: its n_ctx per slot),
    `image_tokens` what one image costs, `max_images` images per request (vLLM --limit-mm-per-prompt;
    0: no vision, llama-server without --mmproj)."""

    name: str
    context_length: int = 4096
    image_tokens: int = 256
    max_images: int = 0
    n_ctx_train: int = 0  # llama-server's meta: what the GGUF was trained for; 0: as context_length

    @property
    def vision(self) -> bool:
        return self.max_images > 0


# vLLM's defaults for these: Qwen2.5-VL at a 1024-pixel side costs ~1300 tokens, pooled; one image per prompt
# unless --limit-mm-per-prompt says more.
DEFAULT_MODELS = (
    ServedModel("Qwen/Qwen2.5-VL-3B-Instruct", context_length=8192, image_tokens=1300, max_images=4),
    ServedModel("Qwen/Qwen2.5-1.5B-Instruct", context_length=8192, image_tokens=0, max_images=0),
)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    """vLLM's ErrorResponse (serving_engine.py create_error_response), as llama-server also shapes its own
    (server.cpp format_error_response): {"error": {"message", "type", "code"}}."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status)


def _sse(value: dict | str) -> bytes:
    data = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _Stream:
    """An answer sent as vLLM's StreamingResponse sends one (refusals were answered before it, with their own
    status and JSON body); a client leaving aborts the request
    (api_server.py `with_cancellation`, server.cpp's `is_connection_closed`); `cut` drops the connection
    after the first chunk."""

    def __init__(self, events: AsyncGenerator[dict, None], *, stream: bool, stopping: threading.Event,
                 on_drop, cut: bool = False):
        self.events, self.stream, self.stopping, self.on_drop, self.cut = events, stream, stopping, on_drop, cut

    async def __call__(self, scope, receive, send) -> None:
        writer = asyncio.ensure_future(self._write(scope, receive, send))
        left = asyncio.ensure_future(self._client_left(receive))
        try:
            done, _ = await asyncio.wait({writer, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, left):
                task.cancel()
            await asyncio.gather(writer, left, return_exceptions=True)
        if writer in done:
            writer.result()
        else:
            self.on_drop()

    @staticmethod
    async def _client_left(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _write(self, scope, receive, send) -> None:
        started, whole = False, []
        async with aclosing(self.events) as events:  # closed early too: the request's slot is freed
            async for event in events:
                if not self.stream:
                    whole.append(event)
                    continue
                if not started:
                    started = True
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
                await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
                if self.cut:
                    return  # uvicorn closes a connection whose body was left unfinished
        if self.stream:
            await send({"type": "http.response.body", "body": _sse("[DONE]"), "more_body": False})
        else:
            await JSONResponse(whole[-1])(scope, receive, send)


class FakeOpenAI(Peer):
    """vLLM / llama-server as a test peer. Options: `models` (ServedModel or names), `slots` decoded at once,
    `flavour` ("vllm" or "llama.cpp": how /v1/models describes a model), `latency` (s) of prompt evaluation
    once a slot is taken, `token_delay` (s) between tokens, `api_key` (None: any or none accepted).
    `mode`, settable at any time: "ok", "error" (500 on everything), "hang" (no answer until stop or another
    mode), "cut" (a stream's connection dropped after its first chunk), "stream_error" (a few tokens, then an
    error event). Records: `requests`, one dict per chat completion as it arrives: model, messages (their text),
    images (count), image_urls (as sent), max_tokens, temperature, response_format, stream, stream_options;
    then prompt_tokens, finish_reason (None until done). `in_flight` (requests holding a slot),
    `max_in_flight`, `waiting` (for a slot), `cancelled` (requests the client left)."""

    def __init__(self, models=DEFAULT_MODELS, *, slots: int = SLOTS, flavour: str = "vllm", latency: float = 0.0,
                 token_delay: float = 0.0, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0):
        served = [m if isinstance(m, ServedModel) else ServedModel(m) for m in models]
        self.models = {m.name: m for m in served}
        self.slots, self.flavour, self.latency, self.token_delay = slots, flavour, latency, token_delay
        self.api_key = api_key
        self.mode = "ok"
        self.requests: list[dict] = []
        self.cancelled = self.in_flight = self.max_in_flight = self.waiting = 0
        self._slots = asyncio.Semaphore(slots)
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/slots", self._slot_states, methods=["GET"]),
        ])
        self._http = ThreadedServer(self.app, host=host, port=port, name="fake-openai")

    @property
    def url(self) -> str:
        """The API root the client is given (…/v1), as for the real servers."""
        return f"{self.base_url}/v1"

    def start(self):
        if not self._http.running:  # a restarted server has nothing in flight (and a new event loop)
            self._slots, self.in_flight, self.waiting = asyncio.Semaphore(self.slots), 0, 0
        return super().start()

    # -- refusals before any work --------------------------------------------------
    async def _refusal(self, request: Request) -> Response | None:
        if self.mode == "hang":
            await self._http.hang(lambda: self.mode == "hang")
        if self._http.stopping.is_set():
            return _error(503, "server is shutting down", "unavailable_error")
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Invalid API Key", "authentication_error")  # server.cpp middleware_validate_api_key
        if self.mode == "error":
            return _error(500, "EngineCore encountered an issue. See stack trace for the root cause.",
                          "InternalServerError")  # vLLM's EngineDeadError
        return None

    # -- chat completions ------------------------------------------------------------
    async def _chat(self, request: Request) -> Response:
        if refusal := await self._refusal(request):
            return refusal
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(400, "Expecting value: line 1 column 1 (char 0)", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "Input should be a valid dictionary", "BadRequestError")
        name = body.get("model") or ""
        texts, image_urls = self._contents(body.get("messages"))
        record = {"model": name, "messages": texts, "images": len(image_urls), "image_urls": image_urls,
                  "max_tokens": body.get("max_tokens"), "temperature": body.get("temperature"),
                  "response_format": body.get("response_format"), "stream": body.get("stream") is True,
                  "stream_options": body.get("stream_options"), "prompt_tokens": None, "finish_reason": None}
        self.requests.append(record)
        if (model := self.models.get(name)) is None:  # serving_engine.py _check_model
            return _error(404, f"The model `{name}` does not exist.", "NotFoundError")
        if texts is None:
            return _error(400, "messages: Input should be a valid list", "BadRequestError")
        if image_urls and not model.vision:  # vLLM's multimodal limits; llama-server without --mmproj
            return _error(400, f"{model.name} is not a multimodal model: images are not supported",
                          "BadRequestError")
        if len(image_urls) > model.max_images:  # vllm/multimodal: limit_mm_per_prompt
            return _error(400, f"At most {model.max_images} image(s) may be provided in one prompt.",
                          "BadRequestError")
        images = []
        for url in image_urls:
            found = DATA_URI.fullmatch(url)
            try:
                images.append(base64.b64decode(found[1], validate=True) if found else b"")
            except (binascii.Error, ValueError):
                images.append(b"")
            if not images[-1]:
                return _error(400, "Invalid image: expected a base64 data URI", "BadRequestError")
        prompt = "\n".join(texts)
        prompt_tokens = TEMPLATE_TOKENS + count_tokens(prompt) + model.image_tokens * len(images)
        record["prompt_tokens"] = prompt_tokens
        max_tokens = body.get("max_tokens")
        asked = prompt_tokens + (max_tokens if isinstance(max_tokens, int) else 0)
        if prompt_tokens >= model.context_length or asked > model.context_length:  # serving_engine.py _validate_input
            return _error(400, f"This model's maximum context length is {model.context_length} tokens. However, "
                          f"you requested {asked} tokens ({prompt_tokens} in the messages, {max_tokens or 0} in the "
                          "completion). Please reduce the length of the messages or completion.", "BadRequestError")
        try:
            captions = [describe_image(image) for image in images]
        except Exception:
            return _error(400, "Failed to load image: cannot identify image file", "BadRequestError")
        text = self._text(prompt, captions, body.get("response_format"))
        work = self._answer(record, model, text, max_tokens, body)
        return _Stream(work, stream=record["stream"], stopping=self._http.stopping, on_drop=self._dropped,
                       cut=self.mode == "cut")

    @staticmethod
    def _contents(messages: Any) -> tuple[list[str] | None, list[str]]:
        """The messages' texts and image URLs (content as a string or a list of parts)."""
        if not isinstance(messages, list):
            return None, []
        texts, urls = [], []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
            for part in parts:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    texts.append(str(part.get("text") or ""))
                elif part.get("type") == "image_url":
                    urls.append(str((part.get("image_url") or {}).get("url") or ""))
        return texts, urls

    @staticmethod
    def _text(prompt: str, captions: list[str], response_format: Any) -> str:
        plain = "; ".join(captions) if captions else f"You said: {prompt}"
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_schema":  # guided decoding (vLLM) or a grammar (llama-server) from the schema
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            return json.dumps(SchemaAnswer(schema, Task.read(prompt), plain).fill())
        return json.dumps({"answer": plain}) if kind == "json_object" else plain

    async def _answer(self, record: dict, model: ServedModel, text: str, max_tokens: Any, body: dict):
        """The chunks of one answer, once a slot is free (serving_chat.py chat_completion_stream_generator)."""
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async for event in self._chunks(record, model, text, max_tokens, body):
                yield event
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def _chunks(self, record: dict, model: ServedModel, text: str, max_tokens: Any, body: dict):
        if self.latency:
            await asyncio.sleep(self.latency)  # prefill
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model.name}
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        tokens, reason = re.findall(r"\s*\S+", text), "stop"
        if isinstance(max_tokens, int) and 0 <= max_tokens < len(tokens):
            tokens, reason = tokens[:max_tokens], "length"

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return head | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]} | (
                {"usage": None} if usage_wanted else {})

        if not record["stream"]:
            record["finish_reason"] = reason
            yield {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": reason}],
                "usage": self._usage(record, len(tokens))}
            return
        yield chunk({"role": "assistant", "content": ""})  # vLLM's first chunk names the role
        for i, token in enumerate(tokens):
            if i and self.token_delay:
                await asyncio.sleep(self.token_delay)
            if self.mode == "stream_error" and i == min(STREAM_ERROR_AFTER, len(tokens) - 1):
                # serving_chat.py: an exception in the generator becomes `data: {"error": ...}`, then [DONE]
                yield {"error": {"message": "EngineCore encountered an issue. See stack trace for the root cause.",
                                 "type": "InternalServerError", "param": None, "code": 500}}
                return
            yield chunk({"content": token}, reason if i == len(tokens) - 1 else None)
        if not tokens:
            yield chunk({"content": ""}, reason)
        record["finish_reason"] = reason
        if usage_wanted:  # serving_chat.py: include_usage, a last chunk without choices
            yield head | {"choices": [], "usage": self._usage(record, len(tokens))}

    @staticmethod
    def _usage(record: dict, completion: int) -> dict:
        prompt = record["prompt_tokens"]
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _dropped(self) -> None:
        self.cancelled += 1

    # -- the rest of the API ---------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        """serving_models.py show_available_models (max_model_len); server.cpp handle_models (meta)."""
        if refusal := await self._refusal(request):
            return refusal
        return JSONResponse({"object": "list", "data": [self._listing(m) for m in self.models.values()]})

    def _listing(self, model: ServedModel) -> dict:
        entry: dict[str, Any] = {"id": model.name, "object": "model", "created": 1_735_689_600}
        if self.flavour == "llama.cpp":
            # As a real llama-server here lists its model: the modalities it takes (image only
            # with --mmproj), a slot's context (n_ctx: -c / -np) and the model's own.
            modalities = ["text", "image"] if model.vision else ["text"]
            return entry | {"owned_by": "llamacpp",
                            "architecture": {"input_modalities": modalities, "output_modalities": ["text"]},
                            "meta": {"vocab_type": 2, "n_vocab": 262144, "n_ctx": model.context_length,
                                     "n_ctx_train": model.n_ctx_train or model.context_length,
                                     "n_embd": 640, "n_params": 268098176}}
        return entry | {"owned_by": "vllm", "root": model.name, "parent": None, "max_model_len": model.context_length}

    async def _health(self, request: Request) -> Response:
        """api_server.py /health: 200 with no body while the engine lives (server.cpp: {"status": "ok"})."""
        if self._http.stopping.is_set() or self.mode == "error":
            return Response(status_code=503)
        return Response(status_code=200)

    async def _slot_states(self, request: Request) -> Response:
        """server.cpp handle_slots: each slot and whether it is processing."""
        busy = self.in_flight
        return JSONResponse([{"id": i, "n_ctx": max(m.context_length for m in self.models.values()),
                              "is_processing": i < busy} for i in range(self.slots)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenAI-compatible server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--slots", type=int, default=SLOTS, help="requests decoded at once")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of prompt evaluation per answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--flavour", choices=("vllm", "llama.cpp"), default="vllm")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeOpenAI(slots=args.slots, flavour=args.flavour, latency=args.latency, token_delay=args.token_delay,
                    host=args.host, port=args.port) as fake:
        print(f"fake OpenAI-compatible server listening on {fake.url}", flush=True)
        while not stop.wait(HANG_POLL * 5):
            pass


if __name__ == "__main__":
    main()
