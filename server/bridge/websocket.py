"""The original node's realtime WebSocket, `/api/v1/ws`, riding on the Infer
RPC.

Binary message: one image. Text message: the prompt. Answers come back as
the original sent them: binary messages, each one JSON object as Ollama
streams it (`model`, `created_at`, `response`, `done`; on the last also
`done_reason` and Ollama's counts), the last with ours beside: `frames`, the
frames answered, and `frames_dropped`, those dropped so far while the model
was busy or no prompt had come. `?format=text` sends text messages
`{"response": "...", "done": bool}` instead (`frames` and `frames_dropped`
on the last), as this bridge did before. Images sent before any prompt wait
for it (the newest batch of them: server/realtime.py); each from the one
that fills a batch on gets the text message "No prompt received for image
batch". Notices are such plain text; a refused image (not an image, too
large) gets `{"error": "...", "done": false}` and the stream goes on, while
an error that ends the stream (RealtimeLimits.max_bad_frames bad images in
a row, a prompt too long, the model unavailable) gets
`{"error": "...", "done": true}` and the close (CLOSE_CODES). A message over
the WebSocket's own limit gets that too, from server/bridge/ws_connections.py.
`?num_predict=N` limits the answer length.
Keep-alive pings (every WS_PING_INTERVAL, 10 s) are uvicorn's (server/bridge/main.py).
The only subprotocol the bridge ever picks is `vlmnode` (the token a browser
offers as `bearer.<token>` is read and removed by server/bridge/auth.py, never
echoed). A plain HTTP GET, without the upgrade, is answered 426.
"""

import asyncio
import json
import logging
from typing import TypeAlias

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from server import metrics
from server.bridge.auth import caller_metadata
from server.bridge.errors import rpc_error_message
from server.errors import quoted
from vlmnode.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)
InferCall: TypeAlias = grpc.aio.StreamStreamCall[pb.InferRequest, pb.InferResponse]  # one Infer, relayed

MAX_NUM_PREDICT = 8192
SUBPROTOCOL = "vlmnode"
FORMATS = ("binary", "text")  # ?format=: how answers are sent; the first is the default
# gRPC codes as WebSocket close codes (RFC 6455, section 7.4.1).
CLOSE_CODES = {
    grpc.StatusCode.OK: 1000,
    grpc.StatusCode.DEADLINE_EXCEEDED: 1000,
    grpc.StatusCode.INVALID_ARGUMENT: 1008,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 1009,
    grpc.StatusCode.UNAVAILABLE: 1013,
}


def _num_predict(websocket: WebSocket) -> int:
    raw = websocket.query_params.get("num_predict", "0")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_NUM_PREDICT:
        raise ValueError(f"num_predict must be an integer between 0 and {MAX_NUM_PREDICT}, got {raw!r}")
    return value


def _format(websocket: WebSocket) -> str:
    raw = websocket.query_params.get("format", FORMATS[0])
    if raw not in FORMATS:
        raise ValueError(f"format must be {' or '.join(FORMATS)}, got {quoted(raw)}")
    return raw


def error_message(message: str, *, closing: bool = True) -> str:
    """A refusal as the client reads it; `done` says whether the socket closes after it."""
    return json.dumps({"error": message, "done": closing})


async def _close(websocket: WebSocket, code: int, message: str) -> None:
    """Says why in a message (browsers hide close reasons), then closes."""
    try:
        await websocket.send_text(error_message(message))
        await websocket.close(code=code, reason=message.encode()[:120].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError):
        pass


def ollama_object(chunk: pb.AnswerChunk) -> dict:
    """A chunk as Ollama's /api/generate streams it, its fields in Ollama's
    order (a count Ollama left out stays out, as in its JSON), and ours."""
    answer: dict = {
        "model": chunk.model,
        "created_at": chunk.created_at.ToJsonString(),
        "response": chunk.text,
        "done": chunk.done,
    }
    if chunk.done:
        if chunk.done_reason:
            answer["done_reason"] = chunk.done_reason
        for field, value in chunk.metrics.ListFields():  # in field order, which is Ollama's
            answer[field.name] = value.ToNanoseconds() if field.message_type else value
        answer.update(frames=list(chunk.frame_ids), frames_dropped=chunk.frames_dropped)
    return answer


def text_object(chunk: pb.AnswerChunk) -> dict:
    answer: dict = {"response": chunk.text, "done": chunk.done}
    if chunk.done:
        answer.update(frames=list(chunk.frame_ids), frames_dropped=chunk.frames_dropped)
    return answer


async def _client_to_node(websocket: WebSocket, call: InferCall) -> None:
    """Passes the client's messages on until it leaves. Returns early when the
    node has ended the call: why is for the reading side to say, since a
    write racing the end can make grpc report a bare INTERNAL instead."""
    frames = 0
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            call.cancel()
            raise WebSocketDisconnect()
        if message.get("bytes") is not None:
            frames += 1
            request = pb.InferRequest(frame=pb.Frame(id=str(frames), image=message["bytes"]))
        elif message.get("text") is not None:
            request = pb.InferRequest(prompt=pb.Prompt(text=message["text"]))
        else:
            continue
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return


async def _node_to_client(websocket: WebSocket, call: InferCall, answer_format: str) -> None:
    async for response in call:
        kind = response.WhichOneof("message")
        if kind == "notice":
            notice = response.notice
            # A refusal the stream survives (a bad frame) is an error in JSON, the rest words.
            await websocket.send_text(error_message(notice.message, closing=False) if notice.code else notice.message)
        elif kind == "error":
            code = CLOSE_CODES.get(getattr(grpc.StatusCode, response.error.code, None), 1011)
            await _close(websocket, code, response.error.message)
            return
        elif answer_format == "text":
            await websocket.send_text(json.dumps(text_object(response.chunk)))
        else:
            answer = json.dumps(ollama_object(response.chunk), separators=(",", ":"), ensure_ascii=False)
            await websocket.send_bytes(answer.encode())


def _subprotocol(websocket: WebSocket) -> str | None:
    """A browser fails the socket unless the server picks one of the
    subprotocols it offered, so it offers `vlmnode` beside its token; the
    bridge picks that one, or none."""
    return SUBPROTOCOL if SUBPROTOCOL in (websocket.scope.get("subprotocols") or []) else None


async def realtime(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol=_subprotocol(websocket))
    try:
        num_predict = _num_predict(websocket)
        answer_format = _format(websocket)
    except ValueError as exc:
        await _close(websocket, 1008, str(exc))
        return
    metrics.WEBSOCKETS.inc()
    call = websocket.app.state.inference.Infer(metadata=caller_metadata())
    inbound = outbound = None
    try:
        # The first write is where a node out of reach shows: said like any other end.
        await call.write(pb.InferRequest(config=pb.StreamConfig(num_predict=num_predict)))
        inbound = asyncio.create_task(_client_to_node(websocket, call))
        outbound = asyncio.create_task(_node_to_client(websocket, call, answer_format))
        done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        if outbound not in done:  # the node ended the call while the client wrote: hear its reason
            await outbound
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            await _close(websocket, CLOSE_CODES.get(exc.code(), 1011), rpc_error_message(exc))
    except (WebSocketDisconnect, asyncio.CancelledError):
        pass
    finally:
        metrics.WEBSOCKETS.dec()
        call.cancel()
        tasks = [task for task in (inbound, outbound) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def upgrade_required(request: Request) -> JSONResponse:
    return JSONResponse(
        {"error": "this endpoint is a WebSocket: send the request with Upgrade: websocket"},
        426,
        headers={"Upgrade": "websocket"},
    )


routes = [WebSocketRoute("/api/v1/ws", realtime), Route("/api/v1/ws", upgrade_required, methods=["GET"])]
