"""A line that comes in a storm is written once per interval, the next one
saying how many were left out; other lines pass untouched."""

import io
import json
import logging
import sys
import threading

import pytest

from server import logs


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def written():
    """A logger tree whose lines go through the filter into a list, with a clock the test moves."""
    clock = Clock()
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Collect()
    handler.addFilter(logs.OncePerInterval(loggers=("storm",), interval=10.0, clock=clock))
    root = logging.getLogger("storm")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    root.propagate = False
    yield lines, clock
    root.removeHandler(handler)
    root.setLevel(logging.NOTSET)
    root.propagate = True


def test_a_storm_is_one_line_per_interval_with_a_count(written):
    lines, clock = written
    log = logging.getLogger("storm.accept")
    for n in range(5000):
        clock.now += 0.002  # 5,000 in 10 s
        log.error("socket.accept() out of system resource\nsocket: <fd=%d>", n)
    clock.now += 1
    log.error("socket.accept() out of system resource\nsocket: <fd=%d>", 5000)
    assert lines == [
        "socket.accept() out of system resource\nsocket: <fd=0>",
        "socket.accept() out of system resource\nsocket: <fd=5000> (4,999 more like it in the last 11 s)",
    ]


def test_kinds_are_counted_apart_and_quiet_ones_pass(written):
    lines, clock = written
    for _ in range(3):
        logging.getLogger("storm").warning("Exceeded concurrency limit.")
        logging.getLogger("storm").warning("Invalid HTTP request received.")
        logging.getLogger("storm").info("Started server process [%d]", 1)  # below WARNING: never held back
        logging.getLogger("calm").warning("job %s failed", "a")  # not a storm logger
    assert lines == ["Exceeded concurrency limit.", "Invalid HTTP request received."] + [
        "Started server process [1]"
    ] * 3
    clock.now += 10
    logging.getLogger("storm").warning("Exceeded concurrency limit.")
    assert lines[-1] == "Exceeded concurrency limit. (2 more like it in the last 10 s)"


def test_the_node_log_holds_the_storm_back(monkeypatch):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    # setup() takes Python's own hooks too; pytest's are given back afterwards.
    monkeypatch.setattr("sys.excepthook", sys.excepthook)
    monkeypatch.setattr("threading.excepthook", threading.excepthook)
    logs.setup("INFO")
    try:
        for _ in range(10_000):
            logging.getLogger("uvicorn.error").warning("Exceeded concurrency limit.")
        logging.getLogger("server.jobs").warning("job %s failed", "a")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
    messages = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
    assert messages == ["Exceeded concurrency limit.", "job a failed"]
