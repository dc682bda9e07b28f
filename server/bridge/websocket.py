"""The original node's realtime WebSocket, `/api/v1/ws`, riding on the Infer
RPC.

Binary message: one image. Text message: the prompt. Answers come back as
JSON `{"response": "...", "done": bool}` as the model streams them (the last
one also names the frames answered and how many were dropped while the model
was busy); images sent before any prompt get the text message "No prompt
received for image batch". `?num_predict=N` limits the answer length.
Keep-alive pings (every WS_PING_INTERVAL, 10 s) are uvicorn's (server/bridge/main.py).
The only subprotocol the bridge ever picks is `vlmnode` (the token a browser
offers as `bearer.<token>` is read and removed by server/bridge/auth.py, never
echoed). A plain HTTP GET, without the upgrade, is answered 426.
"""

import asyncio
import json
import logging

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from vlmnode.v1 import inference_pb2 as pb

from server import metrics
from server.bridge.auth import caller_metadata

log = logging.getLogger(__name__)

MAX_NUM_PREDICT = 8192
SUBPROTOCOL = "vlmnode"
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


async def _close(websocket: WebSocket, code: int, message: str) -> None:
    """Says why in a message (browsers hide close reasons), then closes."""
    try:
        await websocket.send_text(json.dumps({"error": message, "done": True}))
        await websocket.close(code=code, reason=message.encode()[:120].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError):
        pass


async def _client_to_node(websocket: WebSocket, call) -> None:
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


async def _node_to_client(websocket: WebSocket, call) -> None:
    async for response in call:
        kind = response.WhichOneof("message")
        if kind == "notice":
            await websocket.send_text(response.notice.message)
            continue
        if kind == "error":
            code = CLOSE_CODES.get(getattr(grpc.StatusCode, response.error.code, None), 1011)
            await _close(websocket, code, response.error.message)
            return
        chunk = response.chunk
        answer: dict = {"response": chunk.text, "done": chunk.done}
        if chunk.done:
            answer.update(frames=list(chunk.frame_ids), frames_dropped=chunk.frames_dropped)
        await websocket.send_text(json.dumps(answer))


def _subprotocol(websocket: WebSocket) -> str | None:
    """A browser fails the socket unless the server picks one of the
    subprotocols it offered, so it offers `vlmnode` beside its token; the
    bridge picks that one, or none."""
    return SUBPROTOCOL if SUBPROTOCOL in (websocket.scope.get("subprotocols") or []) else None


async def realtime(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol=_subprotocol(websocket))
    try:
        num_predict = _num_predict(websocket)
    except ValueError as exc:
        await _close(websocket, 1008, str(exc))
        return
    metrics.WEBSOCKETS.inc()
    call = websocket.app.state.inference.Infer(metadata=caller_metadata())
    await call.write(pb.InferRequest(config=pb.StreamConfig(num_predict=num_predict)))
    inbound = asyncio.create_task(_client_to_node(websocket, call))
    outbound = asyncio.create_task(_node_to_client(websocket, call))
    try:
        done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        if outbound not in done:  # the node ended the call while the client wrote: hear its reason
            await outbound
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            await _close(websocket, CLOSE_CODES.get(exc.code(), 1011), exc.details() or exc.code().name)
    except (WebSocketDisconnect, asyncio.CancelledError):
        pass
    finally:
        metrics.WEBSOCKETS.dec()
        call.cancel()
        for task in (inbound, outbound):
            task.cancel()
        await asyncio.gather(inbound, outbound, return_exceptions=True)


async def upgrade_required(request: Request) -> JSONResponse:
    return JSONResponse(
        {"error": "this endpoint is a WebSocket: send the request with Upgrade: websocket"},
        426,
        headers={"Upgrade": "websocket"},
    )


routes = [WebSocketRoute("/api/v1/ws", realtime), Route("/api/v1/ws", upgrade_required, methods=["GET"])]
