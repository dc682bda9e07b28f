"""One realtime stream: frames and prompts in, streamed answers out.

Plain asyncio, no gRPC calls: the Infer servicer feeds a `Session` what the
client sends and forwards what `answers()` yields. While the model answers,
or before any prompt has come, only the newest batch of frames is kept and
the rest are counted as dropped, so memory per stream is bounded and answers
stay current; frames kept before the first prompt are answered when it comes.
A frame the node cannot take is refused with a notice and the stream goes on,
as the original node did; only a client that sends nothing but bad frames
(`max_bad_frames` in a row) has its stream ended.
"""

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server import metrics
from server.coalesce import coalesced
from server.config import Settings
from server.engines import Chunk, Engine
from server.errors import BadInput, NodeError, PeerUnavailable, TooLarge, quoted, shown
from server.grpc_errors import status_for
from server.images import check_image, prepare, tile
from server.model_info import MODEL_NAME, ModelInfo
from vlmnode.v1 import inference_pb2

NO_PROMPT = "No prompt received for image batch"
MAX_FRAME_ID = 200  # characters
MAX_NOTICES = 100  # notices kept for a client that sends faster than it reads; the oldest go first
# Said before the prompt when a batch reaches the model as one contact sheet.
TILED = "The image shows {n} frames from a camera, in time order, left to right and top to bottom, numbered. "


@dataclass(frozen=True)
class RealtimeLimits:
    # From the settings (server/config.py says what each is).
    max_frame_bytes: int  # REALTIME_MAX_FRAME_BYTES
    max_pixels: int  # IMAGE_MAX_PIXELS: refused from the header, before any decode
    max_batch: int  # REALTIME_MAX_BATCH
    idle_timeout: float  # REALTIME_IDLE_TIMEOUT
    flush_after: float  # REALTIME_FLUSH_AFTER
    image_max_side: int  # IMAGE_MAX_SIDE
    max_images: int  # VLM_MAX_IMAGES
    single_image: str  # REALTIME_SINGLE_IMAGE
    # The node's own.
    max_prompt_chars: int = 8000
    max_num_predict: int = 8192
    max_failed_answers: int = 3  # answers in a row the model may fail before the stream ends
    max_bad_frames: int = 5  # frames in a row refused (not an image, too large); the last of them ends the stream

    @classmethod
    def from_settings(cls, settings: Settings) -> "RealtimeLimits":
        return cls(
            max_frame_bytes=settings.realtime_max_frame_bytes,
            max_pixels=settings.image_max_pixels,
            max_batch=settings.realtime_max_batch,
            idle_timeout=settings.realtime_idle_timeout,
            flush_after=settings.realtime_flush_after,
            image_max_side=settings.image_max_side,
            max_images=settings.vlm_max_images,
            single_image=settings.realtime_single_image,
        )


@dataclass(frozen=True)
class StreamSettings:
    model: str
    prompt: str | None
    batch_size: int
    options: dict
    flush_after: float | None  # None: never


@dataclass(frozen=True)
class QueuedFrame:
    id: str
    image: bytes


def stream_settings(
    config: inference_pb2.StreamConfig, limits: RealtimeLimits, *, default_model: str, default_batch: int
) -> StreamSettings:
    """Validates a stream's first message; raises BadInput naming the field."""
    batch = config.batch_size or default_batch
    if not 1 <= batch <= limits.max_batch:
        raise BadInput(f"batch_size must be between 1 and {limits.max_batch}, got {config.batch_size}")
    if not 0 <= config.num_predict <= limits.max_num_predict:
        raise BadInput(f"num_predict must be between 0 and {limits.max_num_predict}, got {config.num_predict}")
    if len(config.prompt) > limits.max_prompt_chars:
        raise BadInput(f"prompt is longer than {limits.max_prompt_chars} characters")
    if len(config.model) > 200:
        raise BadInput("model name is longer than 200 characters")
    if config.model and not MODEL_NAME.fullmatch(config.model):
        raise BadInput(f"model name {quoted(config.model)} is not a model name (letters, digits and . _ - : / only)")
    options: dict = {}
    if config.num_predict:
        options["num_predict"] = config.num_predict
    if config.HasField("temperature"):
        if not 0 <= config.temperature <= 2:
            raise BadInput(f"temperature must be between 0 and 2, got {config.temperature:g}")
        options["temperature"] = config.temperature
    flush = config.flush_after_seconds
    if not math.isfinite(flush) or flush > 3600:
        raise BadInput("flush_after_seconds must be a number of at most 3600")
    return StreamSettings(
        model=config.model or default_model,
        prompt=config.prompt or None,
        batch_size=batch,
        options=options,
        flush_after=None if flush < 0 else (flush or limits.flush_after),
    )


class Session:
    def __init__(self, engine: Engine, settings: StreamSettings, limits: RealtimeLimits):
        self.engine = engine
        self.settings = settings
        self.limits = limits
        self.prompt = settings.prompt
        self.queued: collections.deque[QueuedFrame] = collections.deque()
        self.dropped = 0
        self.answers_sent = 0
        self._failures = 0  # answers in a row the model failed
        self._bad_frames = 0  # frames in a row refused
        self._frames_seen = 0
        self._last_frame = time.monotonic()
        self._flush = False
        self._closed = False
        self._failure: Exception | None = None
        self._notices: collections.deque[inference_pb2.Notice] = collections.deque(maxlen=MAX_NOTICES)
        self._changed = asyncio.Event()
        self._model: ModelInfo | None = None

    # What the client sends.

    def add_frame(self, frame: inference_pb2.Frame) -> None:
        """Queues the frame, or refuses it with a notice naming the status code
        the refusal would end the stream with; the refusal that makes
        `max_bad_frames` in a row raises instead."""
        self._frames_seen += 1
        metrics.FRAMES.inc()
        frame_id = frame.id or f"frame-{self._frames_seen}"
        try:
            self._check(frame)
        except (BadInput, TooLarge) as exc:
            self._bad_frames += 1
            if self._bad_frames >= self.limits.max_bad_frames:
                message = f"{exc.message} ({self._bad_frames} bad frames in a row end the stream)"
                raise type(exc)(message, code=exc.code) from None
            code, message = status_for(exc)
            ids = [frame_id] if len(frame_id) <= MAX_FRAME_ID else []
            self._notify(inference_pb2.Notice(message=message, frame_ids=ids, code=code.name))
            return
        self._bad_frames = 0
        if len(self.queued) >= self.settings.batch_size:
            self.queued.popleft()  # the model is busy, or no prompt has come: keep the newest batch
            self.dropped += 1
            metrics.FRAMES_DROPPED.inc()
        self.queued.append(QueuedFrame(frame_id, frame.image))
        self._last_frame = time.monotonic()
        if self.prompt is None and len(self.queued) >= self.settings.batch_size:
            # What the original said for each frame from the one that filled a batch on.
            self._notify(inference_pb2.Notice(message=NO_PROMPT, frame_ids=[f.id for f in self.queued]))
        self._changed.set()

    def _check(self, frame: inference_pb2.Frame) -> None:
        name = shown(frame.id or self._frames_seen)
        if len(frame.image) > self.limits.max_frame_bytes:
            raise TooLarge(f"frame {name}: {len(frame.image)} bytes, over the limit of {self.limits.max_frame_bytes}")
        if len(frame.id) > MAX_FRAME_ID:
            raise BadInput(f"frame id is longer than {MAX_FRAME_ID} characters")
        try:
            check_image(frame.image, max_bytes=self.limits.max_frame_bytes, max_pixels=self.limits.max_pixels)
        except BadInput as exc:
            raise BadInput(f"frame {name}: {exc.message}") from None

    def _notify(self, notice: inference_pb2.Notice) -> None:
        self._notices.append(notice)
        self._changed.set()

    def set_prompt(self, text: str) -> None:
        if len(text) > self.limits.max_prompt_chars:
            raise BadInput(f"prompt is longer than {self.limits.max_prompt_chars} characters")
        self.prompt = text or None
        self._flush = bool(self.queued)  # a new prompt answers the frames already queued
        self._changed.set()

    def flush(self) -> None:
        if self.prompt is None and self.queued:  # nothing to answer them with: kept, and said
            self._notify(inference_pb2.Notice(message=NO_PROMPT, frame_ids=[f.id for f in self.queued]))
        self._flush = True
        self._changed.set()

    def close(self) -> None:
        """The client sent its last message: answer what is queued, then end."""
        self._closed = True
        self._changed.set()

    def fail(self, exc: Exception) -> None:
        self._failure = exc
        self._changed.set()

    # What the client gets.

    async def answers(self) -> AsyncIterator[inference_pb2.InferResponse]:
        while True:
            self._changed.clear()
            while self._notices:  # before a failure: they came first
                yield inference_pb2.InferResponse(notice=self._notices.popleft())
            if self._failure is not None:
                raise self._failure
            batch = self._take_batch()
            if batch:
                async for response in self._answer(batch):
                    yield response
                continue
            if self._notices:
                continue
            if self._closed:  # frames still queued had no prompt: said when their batch filled or at a flush
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._quiet_left()):
                    await self._changed.wait()

    def _quiet_left(self) -> float | None:
        if not self.queued or self.prompt is None or self.settings.flush_after is None:
            return None
        return max(self._last_frame + self.settings.flush_after - time.monotonic(), 0.001)

    def _take_batch(self) -> list[QueuedFrame] | None:
        if not self.queued:
            self._flush = False
            return None
        if self.prompt is None:  # kept for the prompt to come
            return None
        full = len(self.queued) >= self.settings.batch_size
        flush_after = self.settings.flush_after
        quiet = flush_after is not None and time.monotonic() - self._last_frame >= flush_after
        if not (full or self._flush or self._closed or quiet):
            return None
        batch = list(self.queued)
        self.queued.clear()
        self._flush = False
        return batch

    async def _answer(self, batch: list[QueuedFrame]) -> AsyncIterator[inference_pb2.InferResponse]:
        prompt = self.prompt
        assert prompt is not None  # a batch is taken only once a prompt came (_take_batch)
        limits = self.limits
        prepared = await asyncio.gather(
            *(
                prepare(
                    f.image, max_side=limits.image_max_side, max_bytes=limits.max_frame_bytes, max_pixels=limits.max_pixels
                )
                for f in batch
            ),
            return_exceptions=True,
        )
        images, frame_ids = [], []
        for frame, result in zip(batch, prepared, strict=True):
            if isinstance(result, NodeError):
                note = f"frame {shown(frame.id)} could not be read: {result.message}"
                yield inference_pb2.InferResponse(notice=inference_pb2.Notice(message=note, frame_ids=[frame.id]))
            elif isinstance(result, BaseException):
                raise result
            else:
                images.append(result.jpeg)
                frame_ids.append(frame.id)
        if not images:
            return
        self.answers_sent += 1
        answer_id = self.answers_sent
        try:
            images, frame_ids, prompt = await self._fit(images, frame_ids, prompt)
            stream = coalesced(
                self.engine.stream(prompt, images, model=self.settings.model, options=self.settings.options)
            )
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    yield inference_pb2.InferResponse(chunk=self._answer_chunk(answer_id, frame_ids, chunk))
        except PeerUnavailable as exc:
            # One failed answer is a blip the stream survives; a model that
            # keeps failing ends it with the reason.
            self._failures += 1
            if self._failures >= self.limits.max_failed_answers:
                raise
            note = f"no answer for these frames: {exc.message}"
            yield inference_pb2.InferResponse(notice=inference_pb2.Notice(message=note, frame_ids=frame_ids))
            return
        self._failures = 0

    def _answer_chunk(self, answer_id: int, frame_ids: list[str], chunk: Chunk) -> inference_pb2.AnswerChunk:
        answer = inference_pb2.AnswerChunk(
            answer_id=answer_id,
            text=chunk.text,
            done=chunk.done,
            frame_ids=frame_ids,
            frames_dropped=self.dropped,
            model=chunk.model or self.settings.model,
            done_reason=chunk.done_reason,
        )
        try:
            answer.created_at.FromJsonString(chunk.created_at)
        except ValueError:  # none that reads as a time: when it reached the node
            answer.created_at.GetCurrentTime()
        for name, value in chunk.metrics.items():  # the engine's METRICS, named as in AnswerMetrics
            if name.endswith("_duration"):
                getattr(answer.metrics, name).FromNanoseconds(value)
            else:
                setattr(answer.metrics, name, value)
        return answer

    async def _fit(self, images: list[bytes], frame_ids: list[str], prompt: str) -> tuple[list[bytes], list[str], str]:
        """The batch as the model can take it: as it is, or, for a model that sees
        fewer images than the batch holds (moondream sees one) or whose context
        cannot hold them all, tiled into one contact sheet or cut to the newest frame."""
        if self._model is None:
            self._model = await self.engine.describe(self.settings.model)
        per_request = self.limits.max_images or (None if self._model.several_images else 1)
        takes_all = per_request is None or len(images) <= per_request
        if takes_all and len(images) > 1:
            limit = self.settings.options.get("num_predict")
            takes_all = await self.engine.fits(self._model.name, prompt, len(images), answer_tokens=limit)
        if takes_all:
            return images, frame_ids, prompt
        if self.limits.single_image == "newest":
            return images[-1:], frame_ids[-1:], prompt
        sheet = await tile(images, max_side=self.limits.image_max_side)
        return [sheet], frame_ids, TILED.format(n=len(images)) + prompt
