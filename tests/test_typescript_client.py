"""The TypeScript client (clients/typescript) against a real node: builds it
and runs its own Node tests while this test's event loop serves gRPC, runs
jobs (worker) and answers as the fake Ollama."""

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from server.grpc_server import NodeServer
from tests.conftest import DOMAIN_ID

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "typescript"


async def run(*command: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Runs a command in the package without blocking the event loop; fails
    the test with its output unless it exits 0."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=PACKAGE,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        pytest.fail(f"{' '.join(command)} took over {timeout} s:\n{out.decode(errors='replace')}")
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"{' '.join(command)} exited {process.returncode}:\n{text}"
    return text


async def test_typescript_client_against_a_real_node(node, worker, posemesh, fake_ollama, settings, tls_files):
    assert shutil.which("npm") and shutil.which("node"), "the TypeScript client needs Node.js 20+ and npm on PATH"
    # Install from the lock when node_modules is missing or older than the lock.
    installed = PACKAGE / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (PACKAGE / "package-lock.json").stat().st_mtime:
        await run("npm", "ci", "--no-audit", "--no-fund", timeout=300)
    await run("npm", "run", "build")
    url = f"http://127.0.0.1:{node.port}"
    # A token at a time, as a model writes them: the node merges text that
    # arrives while it is still sending, so an answer given at once may be one chunk.
    fake_ollama.token_delay = 0.01

    # The example glasses app streams the fixture folder, one frame per answer.
    example = ["node", "dist/examples/stream-folder.js", "test/fixtures", "--prompt", "What colour?"]
    out = await run(*example, "--batch-size", "1", "--url", url, "--token", "t0ken")
    assert out.splitlines() == [
        "answer 1: a 64x48 image, mostly blue",
        "  frames: blue.jpg",
        "answer 2: a 64x48 image, mostly red",
        "  frames: red.jpg",
    ], out

    # A second node with TLS and a token, for the security tests.
    secured = NodeServer(dataclasses.replace(
        settings, tls_cert_file=tls_files["cert.pem"], tls_key_file=tls_files["key.pem"], auth_tokens="t0ken"
    ))
    await secured.start()
    try:
        out = await run("npm", "test", env={
            "VLMNODE_URL": url, "VLMNODE_DOMAIN_ID": DOMAIN_ID, "NO_COLOR": "1",
            "VLMNODE_TLS_URL": f"https://localhost:{secured.port}", "VLMNODE_CA_FILE": tls_files["ca.pem"],
            "VLMNODE_TOKEN": "t0ken",
        })
    finally:
        await secured.stop(grace=0.5)
    # Every Node test ran (none skipped for want of a node) and passed.
    assert "skipped 0" in out and "fail 0" in out and "pass 0" not in out, out
    # The realtime tests reached the fake Ollama with the two fixture frames.
    assert any(r["images"] == 2 for r in fake_ollama.requests if r.get("images")), out
