"""One log format for every process of the node: a JSON object a line, with
the time, level, logger and message, and `job_id` / `stream_id` on every line
written while a job or a stream is being served (set `job_id` or `stream_id`
in that task; child tasks inherit them), or given as `extra`.

Nothing that carries a secret is written, at any level: `RedactSecrets`, on
every handler, blanks bearer tokens (`Authorization` values, `Bearer ...`,
`bearer.<token>` WebSocket subprotocols, `access_token=` and other secret
query parameters) and URL passwords, in messages, tracebacks and `extra`s,
whoever logs them (uvicorn and websockets print request lines and, at DEBUG,
every handshake header)."""

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType

from pythonjsonlogger.json import JsonFormatter

job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
stream_id: ContextVar[str | None] = ContextVar("stream_id", default=None)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)  # uvicorn's copy of the message for terminals
        for var in (job_id, stream_id):
            value = var.get()
            if value is not None and not hasattr(record, var.name):
                setattr(record, var.name, value)
        return True


REDACTED = "[redacted]"
_VALUE_END = r"\s\"'&#,;<>()\[\]{}"
_SECRETS = [
    # An Authorization header or metadata value, in any form it is printed:
    # "authorization: Bearer x", "('authorization', 'Bearer x')", "{'Authorization': 'Basic x'}".
    re.compile(r"(?i)(\bauthorization[\"']?\s*(?:[:=,]|%3A)\s*[\"']?)(?!\[redacted\])[^\"'\r\n&]+"),
    re.compile(r"(?i)(\bbearer\s+)(?!tokens?\b|\[redacted\])[A-Za-z0-9\-._~+/]+=*"),
    re.compile(r"(?i)(\bbearer\.)[^\s,;\"'\]\)]+"),  # the WebSocket subprotocol
    re.compile(rf"(?i)(\baccess_token[\"']?\s*(?:=|:|%3D)\s*[\"']?)[^{_VALUE_END}]+"),
    re.compile(
        rf"(?i)([?&;](?:[a-z_\-]*token|api[_\-]?key|password|passwd|secret|client_secret|[a-z\-]*signature|sig)=)"
        rf"[^{_VALUE_END}]+"
    ),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^/\s@]+(?=@)"),  # scheme://user:password@host
]


def redact(text: str) -> str:
    """`text` with every secret the patterns above know replaced by [redacted]."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


# LogRecord fields that hold no caller's text (the message fields are handled apart).
_PLAIN_FIELDS = {"name", "levelname", "pathname", "filename", "module", "funcName", "threadName", "processName",
                 "taskName", "msg", "message", "exc_text", "stack_info"}


class RedactSecrets(logging.Filter):
    """Blanks secrets in a record before any handler writes it (the record is
    shared, so every handler after this one sees it blanked too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            record.msg = {k: redact(v) if isinstance(v, str) else v for k, v in record.msg.items()}
        else:
            message = record.getMessage()
            blanked = redact(message)
            if blanked != message:  # else left as it is, template and arguments
                record.msg, record.args = blanked, None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in record.__dict__.items():
            if isinstance(value, str) and key not in _PLAIN_FIELDS:
                record.__dict__[key] = redact(value)
        return True


# Lines that come in storms: a hostile client or a flood makes them by the
# thousand a second (asyncio's "socket.accept() out of system resource", once
# per pending connection per loop turn; uvicorn's "Exceeded concurrency limit."
# and "Invalid HTTP request received.", once per request; the bridge's refused
# connections). Each kind is written once per interval.
STORM_LOGGERS = ("asyncio", "uvicorn.error", "server.bridge.connections")
STORM_INTERVAL = 10.0  # seconds between two lines of one kind
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


class OncePerInterval(logging.Filter):
    """Drops a WARNING or worse from `loggers` when one of its kind (logger,
    level, first line of the message template) was written less than
    `interval` seconds ago; the next one written says how many were left out:
    "... (1,234 more like it in the last 10 s)". Lines of other loggers, and
    INFO and below, pass untouched."""

    MAX_KINDS = 1000  # kinds remembered; older ones are forgotten past it

    def __init__(self, loggers: tuple[str, ...] = STORM_LOGGERS, interval: float = STORM_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.loggers = loggers
        self.interval = interval
        self.clock = clock
        self._written: dict[tuple, tuple[float, int]] = {}  # kind: (when last written, how many left out since)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not any(
            record.name == name or record.name.startswith(name + ".") for name in self.loggers
        ):
            return True
        kind = (record.name, record.levelno, _ADDRESS.sub("0x", str(record.msg).split("\n", 1)[0][:200]))
        now = self.clock()
        with self._lock:
            last = self._written.get(kind)
            if last is not None and now - last[0] < self.interval:
                self._written[kind] = (last[0], last[1] + 1)
                return False
            if len(self._written) >= self.MAX_KINDS:
                self._written = {k: v for k, v in self._written.items() if now - v[0] < self.interval}
            self._written[kind] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} ({last[1]:,} more like it in the last {now - last[0]:.0f} s)"
            record.args = None
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(OncePerInterval())  # first: a dropped line costs nothing more
    handler.addFilter(RedactSecrets())
    handler.addFilter(_Context())
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # httpx logs every request at INFO; that is noise beside our own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the same, under the openai client
    # uvicorn's own handlers would print a second, plain format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # What Python itself would print plain on stderr: warnings, and the
    # traceback of an exception nobody caught (uvicorn's refusal of a bad TLS
    # key, a thread's crash), which may hold a secret.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("uncaught").critical("%s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return  # as threading's own hook: a thread that exits is no error
    thread = args.thread.name if args.thread else "a thread"
    logging.getLogger("uncaught").critical("in %s: %s: %s", thread, args.exc_type.__name__, args.exc_value,
                                           exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
