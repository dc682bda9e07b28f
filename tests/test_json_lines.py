"""Every line the node's processes print is a JSON object (server/logs.py):
the bridge's own and uvicorn's lines at start, under traffic and at stop, a
bridge that cannot start, and what Python itself would print plain (warnings,
uncaught exceptions, a thread's crash), secrets redacted there too."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets.sync.client

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


def records(output: str) -> list[dict]:
    """The lines of `output` as JSON objects; fails on the first that is not one."""
    parsed = []
    for line in output.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        assert isinstance(value, dict), f"a line that is not a JSON object: {line!r}\nin:\n{output}"
        parsed.append(value)
    return parsed


def bridge(**env: str) -> subprocess.Popen:
    # The bridge needs no database; its gRPC target is a port nothing listens on.
    return subprocess.Popen(
        [sys.executable, "-m", "server.bridge.main"], cwd=ROOT,
        env={**os.environ, "GRPC_TARGET": "127.0.0.1:1", "HTTP_HOST": "127.0.0.1", "HTTP_PORT": "0", **env},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def listening_port(proc: subprocess.Popen, said: list[str]) -> int:
    """The port the bridge chose, from its "Uvicorn running on" line; the lines
    read up to it go to `said`."""
    assert proc.stdout is not None
    for line in proc.stdout:
        said.append(line)
        if found := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
            return int(found[1])
    raise AssertionError("the bridge stopped before it listened:\n" + "".join(said))


def test_the_bridge_prints_json_at_start_under_traffic_and_at_stop():
    proc = bridge(LOG_LEVEL="DEBUG")
    said: list[str] = []
    try:
        port = listening_port(proc, said)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.get(f"{base}/api/v1/jobs").status_code == 503  # the gRPC server is not there
        with socket.create_connection(("127.0.0.1", port)) as sock:  # not HTTP at all
            sock.sendall(b"GARBAGE\r\n\r\n")
            sock.recv(1024)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/api/v1/ws") as ws:
            with pytest.raises(websockets.ConnectionClosed):  # said and closed, maybe before the send
                ws.send(json.dumps({"prompt": "what is on the shelf?"}))
                while True:
                    ws.recv(timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = "".join(said) + proc.communicate(timeout=30)[0]
    assert proc.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal it stopped for
    lines = records(output)
    messages = [r["message"] for r in lines]
    for expected in ("Started server process", "Uvicorn running on", "Invalid HTTP request received.",
                     "Shutting down", "Finished server process"):
        assert any(m.startswith(expected) for m in messages), f"no {expected!r} line in:\n{output}"
    assert {"uvicorn.error", "server.auth"} <= {r["logger"] for r in lines}


def test_a_bridge_that_cannot_listen_says_so_in_json():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = bridge(HTTP_PORT=str(taken.getsockname()[1]))
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    errors = [r for r in records(output) if r["level"] == "ERROR"]
    assert any("address already in use" in r["message"] for r in errors), output


def test_a_bridge_refusing_its_tls_key_says_so_in_json(tmp_path):
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not PEM\n")
    proc = bridge(TLS_CERT_FILE=str(tmp_path / "cert.pem"), TLS_KEY_FILE=str(tmp_path / "key.pem"))
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    [crash] = [r for r in records(output) if r["level"] == "CRITICAL"]
    assert crash["logger"] == "uncaught" and crash["message"].startswith("SSLError: ")
    assert "Traceback (most recent call last)" in crash["exc_info"]


def test_what_python_prints_itself_is_json_with_secrets_redacted():
    script = """
import threading, warnings
from server import logs
logs.setup()
warnings.warn("a deprecated thing")
crash = threading.Thread(target=lambda: 1 / 0, name="cruncher")
crash.start()
crash.join()
raise RuntimeError("cannot reach postgresql://vlm:hunter2@db:5432/vlm")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "hunter2" not in proc.stderr
    warning, thread, uncaught = records(proc.stderr)
    assert warning["logger"] == "py.warnings" and "a deprecated thing" in warning["message"]
    assert thread["logger"] == "uncaught" and thread["message"] == "in cruncher: ZeroDivisionError: division by zero"
    assert uncaught["message"] == "RuntimeError: cannot reach postgresql://vlm:[redacted]@db:5432/vlm"
    assert "Traceback (most recent call last)" in uncaught["exc_info"]
