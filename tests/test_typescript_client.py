"""The TypeScript client (clients/typescript) against a real node: builds it
and runs its own Node tests while this test's event loop serves gRPC, runs
jobs (worker) and answers as the fake Ollama."""

import dataclasses
import shutil

from server.grpc_server import NodeServer
from tests.fixtures import DOMAIN_ID, TYPESCRIPT_CLIENT, run_in_typescript_client


async def test_typescript_client_against_a_real_node(node, worker, posemesh, fake_ollama, settings, tls_files):
    assert shutil.which("npm") and shutil.which("node"), "the TypeScript client needs Node.js 20+ and npm on PATH"
    # Install from the lock when node_modules is missing or older than the lock.
    installed = TYPESCRIPT_CLIENT / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (TYPESCRIPT_CLIENT / "package-lock.json").stat().st_mtime:
        await run_in_typescript_client("npm", "ci", "--no-audit", "--no-fund", timeout=300)
    await run_in_typescript_client("npm", "run", "build")
    url = f"http://127.0.0.1:{node.port}"
    # A token at a time, as a model writes them: the node merges text that
    # arrives while it is still sending, so an answer given at once may be one chunk.
    fake_ollama.token_delay = 0.01

    # The example glasses app streams the fixture folder, one frame per answer.
    example = ["node", "dist/examples/stream-folder.js", "test/fixtures", "--prompt", "What colour?"]
    out = await run_in_typescript_client(*example, "--batch-size", "1", "--url", url, "--token", "t0ken")
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
        out = await run_in_typescript_client("npm", "test", env={
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
