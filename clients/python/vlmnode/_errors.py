"""The one error type a caller handles: `VlmNodeError`, with `.code` (the
gRPC status name, e.g. "NOT_FOUND") and a readable `.message`. Subclasses for
the codes callers most often branch on."""

from __future__ import annotations

import grpc

# How grpc's own messages start when it never reached the node, or lost it
# (the node's messages never start so), and the short reasons we show.
_TRANSPORT_PREFIXES = (
    "failed to connect to all addresses",
    "errors resolving",
    "dns resolution failed",
    "socket closed",
    "connection reset",
    "broken pipe",
    "ssl handshake",
    "handshake failed",
    "connection refused",
)
_REASONS = (
    ("connection refused", "connection refused"),
    ("errors resolving", "unknown host"),
    ("dns resolution failed", "unknown host"),
    ("handshake", "TLS handshake failed"),
    ("ssl", "TLS handshake failed"),
    ("certificate", "TLS handshake failed"),
    ("socket closed", "connection closed"),
    ("connection reset", "connection reset"),
    ("timed out", "timed out"),
)


class VlmNodeError(Exception):
    """Any error from the node or on the way to it.

    `code` is the gRPC status name ("NOT_FOUND", "INVALID_ARGUMENT",
    "UNAVAILABLE", "FAILED_PRECONDITION", ...), `message` a readable line,
    `details` what grpc reported, unchanged."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None, details: str = "") -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details or message

    def __str__(self) -> str:
        return self.message


class NotFoundError(VlmNodeError):
    """The job (or other thing asked for) does not exist."""

    code = "NOT_FOUND"


class InvalidArgumentError(VlmNodeError):
    """The request was refused as malformed; fix it before trying again."""

    code = "INVALID_ARGUMENT"


class UnavailableError(VlmNodeError):
    """The node, or something it depends on, cannot be reached now; trying
    again later may work."""

    code = "UNAVAILABLE"


_BY_CODE: dict[grpc.StatusCode, type[VlmNodeError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def error_from_rpc(exc: grpc.RpcError, target: str, timeout: float | None = None) -> VlmNodeError:
    """A VlmNodeError for a failed call (sync or async grpc)."""
    # The RpcErrors grpc raises (sync ones are grpc.Calls, aio ones
    # AioRpcErrors) all have code() and details(); the base class has not.
    code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
    code: grpc.StatusCode = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details: str = (details_of() if callable(details_of) else "") or ""
    message = details or code.name.lower().replace("_", " ")
    if code == grpc.StatusCode.UNAVAILABLE:
        lowered = details.lower()
        if lowered.startswith(_TRANSPORT_PREFIXES):
            reason = next((why for phrase, why in _REASONS if phrase in lowered), "")
            message = f"cannot reach the node at {target}" + (f" ({reason})" if reason else "")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
        # grpc's own words: our deadline ran out, not something the node said.
        waited = f" within {timeout:g} s" if timeout else ""
        message = f"the node at {target} did not answer{waited}"
    kind = _BY_CODE.get(code, VlmNodeError)
    return kind(message, code=code.name, details=details)


def error_from_stream(code_name: str, message: str) -> VlmNodeError:
    """A VlmNodeError for the StreamError a node sends before ending a stream."""
    code = getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, VlmNodeError)(message, code=code.name, details=message)
