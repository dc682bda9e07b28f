"""Our errors leave the gRPC services as status codes that tell the client
what to do, with one readable message; never as a stack trace."""

import functools
import inspect
import logging

import grpc
import psycopg
import psycopg_pool

from server.errors import (
    BadInput,
    Conflict,
    NodeError,
    NotFound,
    PeerRefused,
    PeerUnavailable,
    TimedOut,
    TooLarge,
    short_message,
)

log = logging.getLogger(__name__)

CODES = {
    BadInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    PeerRefused: grpc.StatusCode.FAILED_PRECONDITION,
    PeerUnavailable: grpc.StatusCode.UNAVAILABLE,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and its message, cut to what trailing metadata carries (`short_message`)."""
    code, message = _status(exc)
    return code, short_message(message)


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, NodeError):
        for kind, code in CODES.items():
            if isinstance(exc, kind):
                return code, exc.message
        return grpc.StatusCode.INTERNAL, exc.message
    if isinstance(exc, psycopg.DataError):  # e.g. text PostgreSQL cannot store: the caller's to fix
        return grpc.StatusCode.INVALID_ARGUMENT, "the request holds text the job database cannot store"
    if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
        return grpc.StatusCode.UNAVAILABLE, "the job database is unavailable; try again"
    log.exception("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"


def translate_errors(method):
    """Decorates a servicer method (unary or server-streaming)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                await context.abort(*status_for(exc))

        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:
            await context.abort(*status_for(exc))

    return unary
