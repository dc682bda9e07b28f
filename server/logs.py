"""One log format for every process of the node: a JSON object a line, with
the time, level, logger and message, and `job_id` / `stream_id` on every line
written while a job or a stream is being served (set `job_id` or `stream_id`
in that task; child tasks inherit them), or given as `extra`."""

import logging
import sys
from contextvars import ContextVar

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


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
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
    # uvicorn's own handlers would print a second, plain format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
