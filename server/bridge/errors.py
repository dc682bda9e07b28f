"""gRPC status codes as HTTP answers: one JSON body, `{"error": "<message>"}`."""

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from server.errors import ANSWERS, short_message

# Each of our errors' gRPC status as ANSWERS gives it, and the statuses that
# reach the bridge from elsewhere: the node's auth (UNAUTHENTICATED), gRPC
# itself, or a node of another version.
HTTP_STATUS = {answer.grpc: answer.http for answer in ANSWERS.values()} | {
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def rpc_error_message(exc: grpc.aio.AioRpcError) -> str:
    """What a failed call says to the bridge's client: the node's message, or,
    when the node could not be reached at all, that (not gRPC's own words)."""
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "").lower():
        return "the node's gRPC server is not reachable"
    # Cut here too: the node behind may be an older one that echoes without bound.
    return short_message(exc.details() or code.name.lower())


async def grpc_error_handler(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
    return error_response(HTTP_STATUS.get(exc.code(), 500), rpc_error_message(exc))


async def http_error_handler(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths and wrong methods answer in the same JSON shape."""
    response = error_response(exc.status_code, exc.detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response
