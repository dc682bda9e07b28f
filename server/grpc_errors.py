"""Our errors leave the gRPC services as status codes that tell the client
what to do, with one readable message; never as a stack trace."""

import functools
import inspect
import logging

import grpc

from server.errors import NodeError, answer_for, short_message

log = logging.getLogger(__name__)


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and its message, cut to what trailing metadata carries (`short_message`)."""
    if isinstance(exc, NodeError):
        return answer_for(exc).grpc, short_message(exc.public_message)
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
