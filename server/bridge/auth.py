"""Who may call the bridge: callers with the node's bearer token, from pages
the node allows.

**Tokens.** The bridge wants the same bearer token as the gRPC server, and
passes the caller's token on with each gRPC call it makes for them. The token
comes as `Authorization: Bearer <token>`; where a browser cannot set headers
it may also come as the query parameter `access_token` (the WebSocket and the
event streams only) or as the WebSocket subprotocol `bearer.<token>`. Once
read, the token is taken out of the request (header, query parameter,
subprotocol), as Kubernetes' API server drops the Authorization header once
it has authenticated: nothing further down, uvicorn's request lines included,
can echo or log it. Only `/api/` asks for one: health, the OpenAPI document
and the console's static files are open.

**Origins.** A browser sends `Origin` with every cross-origin request, every
POST and every WebSocket handshake. The bridge answers a request from a page
it does not allow with 403 on `/api/` (and the WebSocket), and gives CORS
headers only to pages it allows: its own origin (the Origin names the host
the request was sent to, as Host or a proxy's X-Forwarded-Host), and
ALLOWED_ORIGINS (by default pages on localhost, 127.0.0.1 and [::1], any
port). A request without `Origin` comes from no browser page and is let
through.
"""

from contextvars import ContextVar
from urllib.parse import unquote_plus, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from server.auth import UNAUTHENTICATED, Tokens, bearer
from server.config import DEFAULT_ALLOWED_ORIGINS, Settings
from server.origins import DEFAULT_PORTS, Origin, allowed_origin, parse_origin

SUBPROTOCOL_PREFIX = "bearer."
QUERY_TOKEN = "access_token"
QUERY_TOKEN_REFUSED = (
    "access_token in the query is accepted only by the WebSocket and event streams; "
    "send Authorization: Bearer <token>"
)
caller_token: ContextVar[str | None] = ContextVar("caller_token", default=None)


def _accepts_query_token(scope: Scope) -> bool:
    """Browsers cannot set headers on a WebSocket or an EventSource: only there."""
    if scope["type"] == "websocket":
        return True
    return scope["method"] in ("GET", "HEAD") and scope["path"].startswith("/api/") and scope["path"].endswith("/events")


def take_token(scope: Scope) -> tuple[str | None, bool]:
    """The caller's token, and whether one came in the query where it is not
    accepted. Every copy of a token is removed from `scope`."""
    token = None
    headers = []
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            token = token or bearer(value.decode("latin-1"))
        else:
            headers.append((name, value))
    scope["headers"] = headers

    if scope["type"] == "websocket" and scope.get("subprotocols"):
        kept = []
        for protocol in scope["subprotocols"]:
            if protocol.startswith(SUBPROTOCOL_PREFIX):
                token = token or protocol[len(SUBPROTOCOL_PREFIX):]
            else:
                kept.append(protocol)
        scope["subprotocols"] = kept

    in_query, parts = None, []
    for part in scope.get("query_string", b"").split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name.decode("latin-1")) == QUERY_TOKEN:
            in_query = in_query or unquote_plus(value.decode("latin-1"))
        elif part:
            parts.append(part)
    if in_query is not None:
        scope["query_string"] = b"&".join(parts)
    misplaced = False
    if token is None and in_query:
        if _accepts_query_token(scope):
            token = in_query
        else:
            misplaced = True
    return token, misplaced


async def _refuse(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    if scope["type"] == "websocket":
        await WebSocket(scope, receive, send).send_denial_response(response)
    else:
        await response(scope, receive, send)


class RequireToken:
    def __init__(self, app: ASGIApp, tokens: Tokens):
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token, misplaced = take_token(scope)
        if scope["path"].startswith("/api/") and not self.tokens.accepts(token):
            message = QUERY_TOKEN_REFUSED if misplaced else UNAUTHENTICATED
            await _refuse(scope, receive, send, JSONResponse({"error": message}, 401, headers={"WWW-Authenticate": "Bearer"}))
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


# Origins.

FOREIGN_ORIGIN = "requests from this web page's origin are not allowed (ALLOWED_ORIGINS)"
CORS_METHODS = "GET, POST, PUT"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE = "600"  # seconds a browser may keep a preflight's answer


class Origins:
    """The web pages whose scripts may call the bridge."""

    def __init__(self, allowed: str = DEFAULT_ALLOWED_ORIGINS):
        """`allowed` as ALLOWED_ORIGINS says it, read by the function that checked it at start."""
        entries = [allowed_origin(entry.strip()) for entry in allowed.split(",") if entry.strip()]
        self.any = None in entries
        self.allowed = [o for o in entries if o is not None]

    @classmethod
    def from_settings(cls, settings: Settings) -> "Origins":
        return cls(settings.allowed_origins)

    def allows(self, origin: str, *hosts: str | None) -> bool:
        """Whether a page of `origin` may call the bridge reached as `hosts`
        (the request's Host, and X-Forwarded-Host from a proxy): its own
        origin always may."""
        if self.any:
            return True
        page = parse_origin(origin)
        if page is None:  # "null" (a sandboxed frame, a file), or garbage
            return False
        if any(host and self._same_host(page, host) for host in hosts):
            return True
        return any(
            page.scheme == o.scheme and page.host == o.host and (o.port is None or o.port == page.port)
            for o in self.allowed
        )

    @staticmethod
    def _same_host(page: Origin, host: str) -> bool:
        try:
            parts = urlsplit("//" + host.strip().lower())
            port = parts.port
        except ValueError:
            return False
        if parts.hostname != page.host:
            return False
        return (port if port is not None else DEFAULT_PORTS.get(page.scheme)) == page.port


class CheckOrigin:
    """Refuses `/api/` requests and WebSocket handshakes from pages that are
    not allowed (403), answers CORS preflights, and adds CORS headers for
    the pages that are."""

    def __init__(self, app: ASGIApp, origins: Origins):
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:  # no browser page: a program, or a same-origin GET
            await self.app(scope, receive, send)
            return
        # X-Forwarded-Host may be believed here: a page can set it neither on a request
        # that goes without a preflight nor on a WebSocket, and a preflight carries only its name.
        forwarded = (headers.get("x-forwarded-host") or "").split(",")[0]
        allowed = self.origins.allows(origin, headers.get("host"), forwarded)
        preflight = scope["type"] == "http" and scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if not allowed and (scope["type"] == "websocket" or preflight or scope["path"].startswith("/api/")):
            await _refuse(scope, receive, send, JSONResponse({"error": FOREIGN_ORIGIN}, 403, headers={"Vary": "Origin"}))
            return
        if preflight:
            response = Response(status_code=204, headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
                "Vary": "Origin",
            })
            await response(scope, receive, send)
            return
        if not allowed or scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["Access-Control-Allow-Origin"] = origin
                response_headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)
