"""The bridge wants the same bearer token as the gRPC server, and passes the
caller's token on with each gRPC call it makes for them.

Browsers cannot set headers on a WebSocket or an EventSource, so besides
`Authorization: Bearer <token>` the token may come as the query parameter
`access_token` or, on a WebSocket, as the subprotocol `bearer.<token>`.
Only `/api/` asks for one: health, the OpenAPI document and the console's
static files are open.
"""

from contextvars import ContextVar
from urllib.parse import parse_qs

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from server.auth import UNAUTHENTICATED, Tokens, bearer

SUBPROTOCOL_PREFIX = "bearer."
caller_token: ContextVar[str | None] = ContextVar("caller_token", default=None)


def token_of(scope: Scope) -> str | None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    if token := bearer(headers.get("authorization")):
        return token
    if scope["type"] == "websocket":
        for protocol in scope.get("subprotocols", ()):
            if protocol.startswith(SUBPROTOCOL_PREFIX):
                return protocol[len(SUBPROTOCOL_PREFIX):]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("access_token") or [None])[0]


class RequireToken:
    def __init__(self, app: ASGIApp, tokens: Tokens):
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        token = token_of(scope)
        if not self.tokens.accepts(token):
            response = JSONResponse({"error": UNAUTHENTICATED}, 401, headers={"WWW-Authenticate": "Bearer"})
            if scope["type"] == "websocket":
                await WebSocket(scope, receive, send).send_denial_response(response)
            else:
                await response(scope, receive, send)
            return
        reset = caller_token.set(token)
        try:
            await self.app(scope, receive, send)
        finally:
            caller_token.reset(reset)


def caller_metadata() -> tuple[tuple[str, str], ...] | None:
    """The caller's token as gRPC metadata, for each call the bridge makes
    for them. (Passed per call: a channel interceptor on grpc.aio leaks the
    request task of a bidirectional call that the server ends early.)"""
    token = caller_token.get()
    return (("authorization", f"Bearer {token}"),) if token else None
