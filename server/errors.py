"""Errors that cross module boundaries.

Each carries a stable `code` (stored in a job's `error.code` and mapped to a
gRPC status) and says whether trying again later may succeed.
"""


def shown(value: object) -> str:
    """A caller's value as it goes into a one-line message: as it is when it
    is printable text, else quoted with its control characters escaped."""
    return value if isinstance(value, str) and value.isprintable() else repr(value)


class NodeError(Exception):
    code = "internal"
    transient = False

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadInput(NodeError):
    """The caller sent something we will never accept (bad image, bad query)."""

    code = "invalid_input"


class NotFound(NodeError):
    code = "not_found"


class Conflict(NodeError):
    """The request is valid but the object is in the wrong state for it."""

    code = "failed_precondition"


class PeerUnavailable(NodeError):
    """A peer (Ollama, posemesh, a webhook receiver) is down, slow or answering 5xx."""

    code = "peer_unavailable"
    transient = True


class PeerRefused(NodeError):
    """A peer answered with a definite refusal (unknown model, forbidden domain)."""

    code = "peer_refused"


class TooLarge(NodeError):
    """A request over one of the node's size limits."""

    code = "too_large"


class TimedOut(NodeError):
    """The caller went quiet for longer than we wait."""

    code = "timed_out"
