"""Bearer tokens: who may use the node.

Tokens come from AUTH_TOKENS (comma-separated) and AUTH_TOKENS_FILE (one a
line, e.g. a mounted Kubernetes Secret). None configured: the node is open,
and says so at start. Tokens are compared in constant time and never logged.
"""

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from server.config import ConfigError, Settings

log = logging.getLogger(__name__)

OPEN_METHODS = ("/grpc.health.v1.Health/",)  # probes need no token
UNAUTHENTICATED = "missing or invalid bearer token"


class Tokens:
    def __init__(self, tokens: list[str]):
        self._tokens = [t.encode() for t in tokens if t]

    @classmethod
    def from_settings(cls, settings: Settings) -> "Tokens":
        tokens = [t.strip() for t in settings.auth_tokens.split(",")]
        if settings.auth_tokens_file:
            try:
                tokens += [line.strip() for line in Path(settings.auth_tokens_file).read_text().splitlines()]
            except OSError as exc:
                raise ConfigError(f"AUTH_TOKENS_FILE cannot be read: {exc.strerror}") from None
        return cls([t for t in tokens if t and not t.startswith("#")])

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def accepts(self, token: str | None) -> bool:
        if not self._tokens:
            return True
        if not token:
            return False
        given = token.encode()
        # Compare with every token, so the time taken says nothing about which matched.
        return sum(hmac.compare_digest(given, t) for t in self._tokens) > 0

    def say_if_open(self, where: str) -> None:
        if not self.enabled:
            log.warning("authentication is off: anyone who reaches %s can use the node "
                        "(set AUTH_TOKENS or AUTH_TOKENS_FILE)", where)


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""

    async def deny(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)

    async def deny_stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        yield  # an async generator, as streaming handlers are

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Every service but health wants `authorization: Bearer <token>`."""

    def __init__(self, tokens: Tokens):
        self.tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if self.tokens.accepts(bearer(metadata.get("authorization"))):
            return handler
        return _denied(handler)
