"""`make demo` (`python -m scripts.demo --once`): its own PostgreSQL and free
ports, so it runs while a node holds the default ports; its story on stdout
(the planted task's start, end and duration, said to come from a fake model)
and the node's JSON log lines in a file of their own."""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings
from server.embedded_postgres import installed_bindir

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = Settings()
DEFAULT_PORTS = (DEFAULTS.grpc_port, DEFAULTS.http_port, DEFAULTS.metrics_port, DEFAULTS.worker_health_port)

pytestmark = pytest.mark.timeout(300)


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@contextlib.contextmanager
def default_ports_taken():
    """Listening sockets on the ports `make run` uses, as a running node holds
    them (a port someone else already holds is taken all the same)."""
    with contextlib.ExitStack() as stack:
        for port in DEFAULT_PORTS:
            sock = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                sock.bind(("0.0.0.0", port))
                sock.listen()
        yield


def demo(data_dir: Path) -> subprocess.CompletedProcess:
    # The demo's node must not take this run's settings; POSTGRES_URL above all.
    env = {**os.environ, "POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/elsewhere", "GRPC_PORT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--once", "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
    )


def test_the_demo_beside_a_running_node_tells_its_story(open_dir):
    data_dir = open_dir / "demo"
    with default_ports_taken():
        proc = demo(data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    lines = out.splitlines()

    assert not [line for line in lines if is_json_object(line)], "log lines on the demo's stdout"
    assert "captions: from a FAKE model: the fake Ollama" in out
    assert "--ollama http://localhost:11434" in out, "how to run it against a real Ollama"
    log_path = data_dir / "node.log"
    assert f"the node's log lines go to {log_path}" in out
    assert f"PostgreSQL in {data_dir / 'postgres'}" in out
    for status in ("running", "completed"):
        assert f"  status: {status}" in lines
    # The planted task: photos 3 to 6 of 8, five seconds apart.
    assert re.search(r"^  start: +photo 3 of 8 \(photo_20250810_165410, taken 2025-08-10T16:54:10Z\)$", out, re.M), out
    assert re.search(r"^  end: +photo 6 of 8 \(photo_20250810_165425, taken 2025-08-10T16:54:25Z\)$", out, re.M), out
    assert re.search(r"^  duration: 15 s$", out, re.M), out
    assert "webhook delivered: " in out

    [http_port] = re.findall(r"node: +console http://127\.0\.0\.1:(\d+)/", out)
    assert int(http_port) not in DEFAULT_PORTS
    logged = log_path.read_text().splitlines()
    assert logged and all(is_json_object(line) for line in logged), [x for x in logged if not is_json_object(x)]
    records = [json.loads(line) for line in logged]
    loggers = {r["logger"] for r in records}
    assert {"server.node", "server.grpc_server", "worker.runner", "uvicorn.error"} <= loggers
    node_said = [r["message"] for r in records if r["logger"] == "server.node"]
    assert any(m.startswith(f"console: http://127.0.0.1:{http_port}/, ") for m in node_said), node_said


@pytest.mark.skipif(installed_bindir() is None, reason="initdb's refusal needs the machine's PostgreSQL binaries")
def test_a_node_that_does_not_start_is_said_in_one_line(open_dir):
    """A data dir whose PostgreSQL cannot be made: the demo ends with what the node said."""
    (open_dir / "demo" / "postgres" / "data").mkdir(parents=True)
    (open_dir / "demo" / "postgres" / "data" / "left-over").write_text("")
    proc = demo(open_dir / "demo")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"make demo: the node stopped at start (exit 1); its last lines, from "
                                  f"{open_dir / 'demo' / 'node.log'}:"), proc.stderr
    assert "vlm-node: the private PostgreSQL in" in proc.stderr
