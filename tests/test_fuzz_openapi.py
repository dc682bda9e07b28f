"""A fuzzing run of the bridge: schemathesis generates requests from the
bridge's own OpenAPI document, valid and invalid, and checks that none is
answered with a server error."""

import asyncio
import re
import os
import shutil
import sys
from pathlib import Path

from tests.conftest import running_bridge

EXAMPLES = 40  # per operation and phase
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


async def test_no_request_from_the_openapi_document_gets_a_server_error(node):
    schemathesis = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    async with running_bridge(f"127.0.0.1:{node.port}") as base:
        process = await asyncio.create_subprocess_exec(
            schemathesis, "run", f"{base}/openapi.json",
            "--checks", "not_a_server_error",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(EXAMPLES),
            "--seed", "20261126",
            "--generation-database", "none",
            # A watch streams until its job ends; no worker runs here, so it never would.
            "--exclude-path-regex", "(/events|/ws)$",
            "--request-timeout", "10",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        out, _ = await asyncio.wait_for(process.communicate(), 300)
    text = out.decode(errors="replace")
    assert process.returncode == 0, text
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", text).groups())
    assert generated == passed and generated >= 7 * EXAMPLES, text  # every operation was exercised
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis-summary.txt").write_text(text[-3000:])
    print(f"schemathesis: {generated} requests, none answered with a server error")
