"""gRPC InferenceService: the bidirectional Infer stream over a realtime
Session."""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

from server import logs, metrics
from server.engines import Engine
from server.errors import BadInput, NodeError, TimedOut
from server.grpc_errors import status_for, translate_errors
from server.realtime import RealtimeLimits, Session, stream_settings
from vlmnode.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)


class InferenceService(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: Engine, limits: RealtimeLimits, *, default_model: str, default_batch: int):
        self.engine = engine
        self.limits = limits
        self.default_model = default_model
        self.default_batch = default_batch

    async def _next(self, requests: AsyncIterator) -> inference_pb2.InferRequest | None:
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                return await anext(requests, None)
        except TimeoutError:
            raise TimedOut(f"no message for {self.limits.idle_timeout:g} s; closing the stream") from None

    @translate_errors
    async def Infer(self, request_iterator, context):
        requests = aiter(request_iterator)
        first = await self._next(requests)
        if first is None or first.WhichOneof("message") != "config":
            raise BadInput("the first message of a stream must be its config")
        settings = stream_settings(
            first.config, self.limits, default_model=self.default_model, default_batch=self.default_batch
        )
        session = Session(self.engine.pinned(), settings, self.limits)
        logs.stream_id.set(uuid.uuid4().hex[:12])  # on this stream's log lines
        reader = asyncio.create_task(self._read(requests, session))
        metrics.STREAMS.inc()
        log.info("stream opened: model %s, batch %d", settings.model, settings.batch_size)
        try:
            async for response in session.answers():
                yield response
        except NodeError as exc:
            # Say why before the status: the client may still be writing, and
            # a write racing the end can hide the status from it.
            code, message = status_for(exc)
            yield inference_pb2.InferResponse(error=inference_pb2.StreamError(code=code.name, message=message))
            raise
        finally:
            metrics.STREAMS.dec()
            reader.cancel()
            log.info("stream closed: %d answers, %d frames dropped", session.answers_sent, session.dropped)

    async def _read(self, requests: AsyncIterator, session: Session) -> None:
        try:
            while (request := await self._next(requests)) is not None:
                kind = request.WhichOneof("message")
                if kind == "frame":
                    session.add_frame(request.frame)
                elif kind == "prompt":
                    session.set_prompt(request.prompt.text)
                elif kind == "flush":
                    session.flush()
                else:
                    raise BadInput("a stream takes one config, as its first message")
            session.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            session.fail(exc)
