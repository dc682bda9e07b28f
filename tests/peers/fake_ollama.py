"""A fake Ollama: a real HTTP server speaking enough of Ollama's API for the real
`ollama` client (sync and async). Answers follow the input so tests can tell them
apart: an image is described by size and dominant colour ("a 64x48 image, mostly
red"); a JSON-schema request (the task-timing call) is answered from the prompt's
`id,timestamp,event` timeline.

    with FakeOllama(latency=0.1) as fake:
        ollama.Client(fake.url).generate("moondream:1.8b", "what?", images=[jpeg])

Standalone: python -m tests.peers.fake_ollama --port 11434 --latency 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import random
import re
import signal
import threading
from collections import Counter
from datetime import datetime, timezone

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.peers.http_server import Peer, ThreadedServer

DEFAULT_MODELS = ("moondream:1.8b", "llama3:latest")
PALETTE = [
    ("red", (255, 0, 0)), ("green", (0, 128, 0)), ("green", (0, 255, 0)),
    ("blue", (0, 0, 255)), ("yellow", (255, 255, 0)), ("orange", (255, 165, 0)),
    ("purple", (128, 0, 128)), ("white", (255, 255, 255)), ("black", (0, 0, 0)),
    ("grey", (128, 128, 128)),
]
COLOUR_RE = re.compile(r"\b(%s)\b" % "|".join(sorted({n for n, _ in PALETTE})), re.IGNORECASE)
TIMELINE_HEADER = "id,timestamp,event"


def _full_name(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


def _nearest_colour(rgb: tuple[int, ...]) -> str:
    return min(PALETTE, key=lambda entry: sum((a - b) ** 2 for a, b in zip(rgb, entry[1])))[0]


def describe_image(data: bytes) -> str:
    """'a WxH image, mostly <colour>'; raises OSError if Pillow cannot decode it."""
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        im.draft("RGB", (16, 16))  # JPEG: decode at reduced scale, enough for a colour vote
        raw = im.convert("RGB").resize((16, 16)).tobytes()
    votes = Counter(_nearest_colour(tuple(raw[i : i + 3])) for i in range(0, len(raw), 3))
    return f"a {width}x{height} image, mostly {votes.most_common(1)[0][0]}"


def parse_timeline(prompt: str) -> tuple[list[tuple[str, str, str]], str]:
    """Split a prompt into timeline rows (id, timestamp, event) and the rest (the instruction)."""
    rows, rest, in_table = [], [], False
    for line in prompt.splitlines():
        if line.strip() == TIMELINE_HEADER:
            in_table = True
            continue
        parts = line.split(",", 2)
        if in_table and len(parts) == 3:
            rows.append(tuple(p.strip() for p in parts))
            continue
        in_table = False
        rest.append(line)
    return rows, "\n".join(rest)


def timing_answer(prompt: str) -> dict:
    """Start/end of the task: the span of events naming the instruction's colour, else everything."""
    rows, instruction = parse_timeline(prompt)
    if not rows:
        return {"start": None, "end": None, "reasoning": "no events in the timeline"}
    colour = COLOUR_RE.search(instruction)
    chosen = [r for r in rows if colour and re.search(rf"\b{colour[1]}\b", r[2], re.IGNORECASE)]
    span = f"events mentioning {colour[1].lower()}" if chosen else "the whole timeline"
    chosen = chosen or rows

    def point(row: tuple[str, str, str], which: str) -> dict:
        return {"image_id": row[0], "timestamp": row[1], "confidence": 0.9 if colour else 0.5,
                "reasoning": f"{which} of {span}: {row[2]}"}

    return {"start": point(chosen[0], "first"), "end": point(chosen[-1], "last"),
            "reasoning": f"the task spans {span} ({len(chosen)} of {len(rows)} events)"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class _NDJSON(StreamingResponse):
    """Streams JSON lines; calls on_end(all_sent) however the stream ends."""

    media_type = "application/x-ndjson"

    def __init__(self, parts: list[dict], delay: float, on_end=None, cut: bool = False):
        self.sent = 0
        self.total = len(parts)
        self.on_end = on_end

        async def lines():
            for i, part in enumerate(parts):
                if i and delay:
                    await asyncio.sleep(delay)
                if i and cut:  # the server drops the connection mid-body
                    raise ConnectionAbortedError("fake Ollama cut the answer")
                yield json.dumps(part) + "\n"
                self.sent = i + 1

        super().__init__(lines())

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_end:
                self.on_end(self.sent == self.total)


class FakeOllama(Peer):
    """Options: `models` known at start; `latency` (s) before each generate/chat answer; `token_delay`
    (s) between streamed chunks; `fail_rate` of generate/chat answered HTTP 500 (seeded by `seed`);
    `pullable` models (None: any). `mode`, settable at any time: "ok", "error" (500 on everything),
    "garbage" (200, not JSON), "hang" (no answer until stop or another mode), "cut" (a streamed
    answer's connection dropped after its first chunk).
    Records: `requests`, `cancelled` streams, `in_flight` and `max_in_flight` generate/chat."""

    def __init__(self, models=DEFAULT_MODELS, *, latency: float = 0.0, token_delay: float = 0.0,
                 fail_rate: float = 0.0, seed: int = 0, pullable=None,
                 host: str = "127.0.0.1", port: int = 0):
        self.models = {_full_name(m) for m in models}
        self.pullable = None if pullable is None else {_full_name(m) for m in pullable}  # None: any
        self.latency, self.token_delay, self.fail_rate = latency, token_delay, fail_rate
        self.mode = "ok"
        self.requests: list[dict] = []
        self.cancelled = self.in_flight = self.max_in_flight = 0
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
        return await self._answer(body, "/api/generate", body.get("prompt") or "", body.get("images") or [])

    async def _chat(self, request: Request) -> Response:
        body = await self._body(request)
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        images = [img for m in messages for img in m.get("images") or []]
        prompt = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        return await self._answer(body, "/api/chat", prompt, images, messages)

    async def _answer(self, body: dict, path: str, prompt: str, images_b64: list, messages=None) -> Response:
        model, options, fmt = body.get("model") or "", body.get("options") or {}, body.get("format")
        stream = body.get("stream", True)
        record = {"path": path, "model": model, "images": len(images_b64), "options": options,
                  "format": fmt, "stream": stream}
        if messages is None:
            record["prompt"] = prompt
        else:
            record["messages"] = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        self.requests.append(record)
        if refusal := await self._misbehaviour():
            return refusal
        if self.fail_rate and self._rng.random() < self.fail_rate:
            return _error(500, "llama runner process has terminated: signal: killed")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        handed_over = False
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if _full_name(model) not in self.models:
                return _error(404, f'model "{model}" not found, try pulling it first')
            try:
                images = [base64.b64decode(s, validate=True) for s in images_b64]
            except (binascii.Error, ValueError, TypeError) as e:
                return _error(400, f"illegal base64 data: {e}")
            try:
                text = self._text(prompt, images, fmt)
            except Exception:
                return _error(400, "failed to process inputs: image: unknown format")
            tokens = re.findall(r"\s*\S+", text)
            limit, reason = options.get("num_predict"), "stop"
            if isinstance(limit, int) and 0 <= limit < len(tokens):
                tokens, reason = tokens[:limit], "length"
            final = {"done": True, "done_reason": reason, "total_duration": 1_000_000,
                     "load_duration": 100_000, "prompt_eval_count": len(prompt.split()) + 1,
                     "prompt_eval_duration": 200_000, "eval_count": len(tokens),
                     "eval_duration": 700_000}
            if not stream:
                return JSONResponse(self._part(model, messages, "".join(tokens)) | final)
            parts = [self._part(model, messages, t) | {"done": False} for t in tokens]
            parts.append(self._part(model, messages, "") | final)
            handed_over = True
            return _NDJSON(parts, self.token_delay, on_end=self._stream_ended, cut=self.mode == "cut")
        finally:
            if not handed_over:
                self.in_flight -= 1

    def _stream_ended(self, complete: bool) -> None:
        self.in_flight -= 1
        if not complete:
            self.cancelled += 1

    @staticmethod
    def _part(model: str, messages, text: str) -> dict:
        if messages is None:
            return {"model": model, "created_at": _now(), "response": text}
        return {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": text}}

    @staticmethod
    def _text(prompt: str, images: list[bytes], fmt) -> str:
        if isinstance(fmt, dict):
            return json.dumps(timing_answer(prompt))
        answer = "; ".join(describe_image(i) for i in images) if images else f"You said: {prompt}"
        return json.dumps({"answer": answer}) if fmt == "json" else answer

    # -- model management ------------------------------------------------------------
    async def _tags(self, request: Request) -> Response:
        if refusal := await self._misbehaviour():
            return refusal
        return JSONResponse({"models": [self._describe_model(m) for m in sorted(self.models)]})

    async def _show(self, request: Request) -> Response:
        if refusal := await self._misbehaviour():
            return refusal
        body = await self._body(request)
        name = body.get("model") or body.get("name") or ""
        if _full_name(name) not in self.models:
            return _error(404, f"model '{name}' not found")
        return JSONResponse({"modelfile": f"FROM {name}\n", "parameters": "stop \"<|end|>\"",
                             "template": "{{ .Prompt }}", "details": self._describe_model(name)["details"],
                             "model_info": {"general.architecture": "llama"}, "modified_at": _now(),
                             "capabilities": ["completion", "vision"]})

    async def _pull(self, request: Request) -> Response:
        if refusal := await self._misbehaviour():
            return refusal
        body = await self._body(request)
        name = _full_name(body.get("model") or body.get("name") or "")
        failure = "pull model manifest: file does not exist"
        if self.pullable is not None and name not in self.pullable:
            if not body.get("stream", True):
                return _error(500, failure)
            return _NDJSON([{"status": "pulling manifest"}, {"error": failure}], self.token_delay)
        self.models.add(name)
        digest = "sha256:" + "ab" * 32
        steps = [{"status": "pulling manifest"},
                 {"status": f"pulling {digest[7:19]}", "digest": digest, "total": 1000, "completed": 500},
                 {"status": f"pulling {digest[7:19]}", "digest": digest, "total": 1000, "completed": 1000},
                 {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                 {"status": "success"}]
        if not body.get("stream", True):
            return JSONResponse({"status": "success"})
        return _NDJSON(steps, self.token_delay)

    async def _version(self, request: Request) -> Response:
        return await self._misbehaviour() or JSONResponse({"version": "0.0.0-fake"})

    @staticmethod
    def _describe_model(name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2024-05-01T10:00:00Z", "size": 1_700_000_000,
                "digest": "ab" * 32,
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "1.8B", "quantization_level": "Q4_0"}}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Ollama server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of answers that are HTTP 500")
    parser.add_argument("--model", action="append", help="known model (repeatable)")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeOllama(args.model or DEFAULT_MODELS, latency=args.latency, token_delay=args.token_delay,
                    fail_rate=args.fail_rate, host=args.host, port=args.port) as fake:
        print(f"fake Ollama listening on {fake.url}", flush=True)
        while not stop.wait(0.1):
            pass


if __name__ == "__main__":
    main()
