"""Errors that cross module boundaries.

Each carries a stable `code` (stored in a job's `error.code`) and says
whether trying again later may succeed; ANSWERS says, once, what each kind
answers over gRPC and, through the bridge, over HTTP.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

MAX_SHOWN = 80  # characters of a caller's value that a message repeats


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """A caller's value as it goes into a one-line message: as it is when it
    is printable text, else quoted with its control characters escaped; cut
    to `limit` characters, ending in "...", when longer. A message names what
    was wrong, it does not carry the input back (a 500 KB value echoed whole
    would outgrow gRPC's trailing metadata and any log line)."""
    cut = isinstance(value, str) and len(value) > limit
    if cut and isinstance(value, str):
        value = value[:limit]  # before repr: a long value is never copied whole
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    if cut or len(text) > limit:
        return text[: max(limit - 3, 1)] + "..."
    return text


def quoted(value: object, limit: int = MAX_SHOWN) -> str:
    """`repr(value)`, as "got 'x'" messages show a caller's value (an empty
    string stays visible), a string longer than `limit` cut first: 'bbb'..."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "..."
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def listed(values: Iterable[object], at_most: int = 5) -> str:
    """Callers' values joined for a message, each `shown`, the first
    `at_most` of them and how many more: "a, b, c, d, e and 995 more"."""
    values = list(values)
    head = ", ".join(shown(v) for v in values[:at_most])
    return head if len(values) <= at_most else f"{head} and {len(values) - at_most:,} more"


# A gRPC status message travels in trailing metadata, percent-encoded (a byte
# outside printable ASCII takes three), and gRPC clients refuse metadata past
# 8 KB now and then and past 16 KB always ("received metadata size exceeds hard
# limit": RESOURCE_EXHAUSTED in place of the real code). So a message that
# leaves the node is cut to this many UTF-8 bytes, 3 KB at most once encoded.
MAX_MESSAGE_BYTES = 1024


def short_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` within `limit` UTF-8 bytes, cut at a character and ending in "..."."""
    if len(message) <= limit // 4:  # no character takes more than 4 bytes
        return message
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


class NodeError(Exception):
    code = "internal"
    transient = False

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def public_message(self) -> str:
        """What a caller of the node's services is told (`message` unless a
        kind says less: the logs and a job's error keep the whole of it)."""
        return self.message


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


DATABASE_UNAVAILABLE = "the job database is unavailable; try again"


class DatabaseUnavailable(PeerUnavailable):
    """The job database cannot serve this call now: it is known to be down,
    the call's connection was lost, none came in time, or the statement was
    cancelled or deadlocked. Raised by the store only (server/store.py)."""

    code = "database_unavailable"

    @property
    def public_message(self) -> str:
        return DATABASE_UNAVAILABLE


class DatabaseFault(NodeError):
    """The job database refused a statement for a reason of the node's own
    (its SQL, its schema): no caller can fix it. The store logs the details."""

    @property
    def public_message(self) -> str:
        return "internal error"


class PeerRefused(NodeError):
    """A peer answered with a definite refusal (unknown model, forbidden domain)."""

    code = "peer_refused"


class TooLarge(NodeError):
    """A request over one of the node's size limits."""

    code = "too_large"


class TimedOut(NodeError):
    """The caller went quiet for longer than we wait."""

    code = "timed_out"


@dataclass(frozen=True)
class Answer:
    """How a kind of error leaves the node: the gRPC status its services
    answer with (server/grpc_errors.py), and the HTTP status the bridge
    turns that status into (server/bridge/errors.py)."""

    grpc: grpc.StatusCode
    http: int


# A kind not named answers as its nearest named base class does.
ANSWERS: dict[type[NodeError], Answer] = {
    NodeError: Answer(grpc.StatusCode.INTERNAL, 500),
    BadInput: Answer(grpc.StatusCode.INVALID_ARGUMENT, 400),
    NotFound: Answer(grpc.StatusCode.NOT_FOUND, 404),
    Conflict: Answer(grpc.StatusCode.FAILED_PRECONDITION, 400),
    PeerRefused: Answer(grpc.StatusCode.FAILED_PRECONDITION, 400),
    PeerUnavailable: Answer(grpc.StatusCode.UNAVAILABLE, 503),
    TooLarge: Answer(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    TimedOut: Answer(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
}


def answer_for(exc: NodeError) -> Answer:
    return next(ANSWERS[kind] for kind in type(exc).__mro__ if kind in ANSWERS)


# A job's error as the original node gave it, in its REST answers and
# webhooks: a number for the kind of failure (its worker/vlm.py: 400 no
# images, 200 webhook failed, 100 anything else), beside which `reason`
# carries the node's own code.
ORIGINAL_CODES = {"no_images": 400, "webhook_failed": 200, "webhook_refused": 200}
PROCESSING_FAILED = 100


def original_error(code: str, message: str) -> dict:
    return {"code": ORIGINAL_CODES.get(code, PROCESSING_FAILED), "reason": code, "message": message}
