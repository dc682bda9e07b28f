"""The bridge's connections against a hostile crowd, in a real `python -m
server.bridge.main` with few file descriptors: connections that send nothing,
or a request head a byte at a time (slowloris), are closed after
HTTP_HEADER_TIMEOUT; `/health` answers while hundreds are open; past
HTTP_MAX_CONNECTIONS the answer is 503, WebSocket upgrades included; a flood
of more connections than the process has descriptors never takes them all;
and the log holds a few lines, not one a refusal."""

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from devpeers.ports import free_port

OPEN_FILES = 2048  # the bridge's RLIMIT_NOFILE
HEADER_TIMEOUT = 4  # seconds
MAX_CONNECTIONS = 300
PATIENCE = 60.0  # seconds a test waits for what must happen


@pytest.fixture
def start_bridge(tmp_path):
    """Starts bridge processes with `open_files` descriptors (RLIMIT_NOFILE);
    each start returns (port, pid, path of its log)."""
    started = []

    def start(open_files: int = OPEN_FILES) -> tuple[int, int, object]:
        port, log_path = free_port(), tmp_path / f"bridge-{len(started)}.log"
        env = {
            **os.environ,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
            "GRPC_TARGET": f"127.0.0.1:{free_port()}",  # no node: /health is the bridge's own
            "HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        }

        # The limit is set by the child itself: a preexec_fn runs between fork
        # and exec, where a lock held by one of this process's other threads
        # (gRPC's, from earlier tests) can hang it for good.
        limited = (
            f"import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, ({open_files}, {open_files})); "
            "runpy.run_module('server.bridge.main', run_name='__main__')"
        )
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, "-c", limited], env=env, stderr=log)
        started.append(process)
        until(lambda: answer(port) == 200, "the bridge answers")
        return port, process.pid, log_path

    yield start
    for process in started:
        process.terminate()
        process.wait(15)


def until(condition, what: str, every: float = 0.05):
    deadline = time.monotonic() + PATIENCE
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        time.sleep(every)
    return result


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)


def answer(port: int, request: bytes = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") -> int | None:
    """The status a new connection gets for `request`, or None when it is closed unanswered."""
    try:
        with connect(port) as sock:
            sock.sendall(request)
            head = sock.recv(64)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


class Trickle(threading.Thread):
    """Slowloris: a request head opened on each socket, then one more byte
    of a header that never ends, a few times a second, until the server
    closes the socket."""

    def __init__(self, sockets: list[socket.socket]):
        super().__init__(daemon=True)
        self.open = list(sockets)
        self.stop = threading.Event()
        for sock in self.open:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")

    def run(self):
        while self.open and not self.stop.wait(0.25):
            for sock in list(self.open):
                try:
                    sock.send(b"x")
                except OSError:
                    self.open.remove(sock)


def test_a_hostile_crowd_is_timed_out_capped_and_logged_briefly(start_bridge):
    port, pid, log_path = start_bridge()
    silent = [connect(port) for _ in range(200)]
    slow = [connect(port) for _ in range(50)]
    trickle = Trickle(slow)
    trickle.start()
    flood: list[socket.socket] = []
    try:
        until(lambda: descriptors(pid) > 250, "250 connections open")
        assert [answer(port) for _ in range(5)] == [200] * 5, "hundreds open, /health answers"

        # Past the cap: 503, for a WebSocket upgrade too.
        silent += [connect(port) for _ in range(MAX_CONNECTIONS - 250 + 20)]
        until(lambda: answer(port) == 503, "503 past the cap")
        upgrade = (
            b"GET /api/v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert answer(port, upgrade) == 503

        # More connections than the bridge has descriptors: they never all get one.
        for _ in range(OPEN_FILES + 500):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            flood.append(sock)
            if len(flood) % 100 == 0:
                assert descriptors(pid) < OPEN_FILES - 100
        assert until(lambda: answer(port), "an answer during the flood") == 503
        assert descriptors(pid) < OPEN_FILES - 100

        # Silent and slow connections are closed; the slow ones despite their bytes.
        until(lambda: all(closed_by_peer(s) for s in silent), "silent connections closed")
        until(lambda: not trickle.open, "slowloris connections closed")
        for sock in flood:
            sock.close()
        until(lambda: answer(port) == 200, "/health answers again")
    finally:
        trickle.stop.set()
        for sock in silent + slow + flood:
            sock.close()

    refusals = [line for line in log_lines(log_path) if line["level"] in ("WARNING", "ERROR")]
    refusals = [line for line in refusals if line["logger"] != "server.auth"]  # "authentication is off"
    assert any(line["message"].startswith("Exceeded concurrency limit.") for line in refusals)
    assert not any("out of system resource" in line["message"] for line in refusals)
    assert len(refusals) <= 8, [line["message"] for line in refusals]


def open_without_waiting(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        sockets.append(sock)
    return sockets


def test_running_out_of_descriptors_is_logged_once_not_once_a_connection(start_bridge):
    # So few descriptors that the flood reaches the limit: asyncio then logs
    # "socket.accept() out of system resource" once per pending connection
    # and loop turn (before, 157,484 lines in this test's minute, and /health
    # never answered again).
    port, pid, log_path = start_bridge(open_files=24)
    flood = open_without_waiting(port, 600)
    try:
        until(lambda: "out of system resource" in log_path.read_text(), "the bridge runs out of descriptors")
    finally:
        for sock in flood:
            sock.close()
    until(lambda: answer(port) == 200, "/health answers again")
    storm = [line for line in log_lines(log_path) if "out of system resource" in line["message"]]
    assert 1 <= len(storm) <= 3, len(storm)


@pytest.mark.parametrize(
    "open_files,served,held,backlog",
    [
        (1_048_576, 1000, 2000, 2048),  # a container's usual limit: the setting as it is
        (20_000, 1000, 2000, 1250),
        (1024, 384, 768, 64),  # a login shell's soft limit: cut to fit, with a warning
    ],
)
def test_connection_limits_stay_below_the_open_file_limit(open_files, served, held, backlog):
    from server.bridge.main import connection_limits
    from server.config import Settings

    limits = connection_limits(Settings(http_max_connections=1000), open_files)
    assert (limits.served, limits.held, limits.backlog) == (served, held, backlog)
    assert limits.held + 3 * limits.backlog < open_files
