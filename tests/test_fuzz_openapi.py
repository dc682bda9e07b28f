"""A fuzzing run of the bridge: schemathesis generates requests from the
bridge's own OpenAPI document, valid and invalid, and checks every answer
with every check it has: no server error, only documented status codes,
content types and headers, bodies that match their schemas, valid data
accepted and invalid data refused, 405 with `Allow` for an undocumented
method, and the rest (`--checks all`).

The suite runs a bounded number of examples (EXAMPLES); a longer run:
`SCHEMATHESIS_EXAMPLES=500 pytest tests/test_fuzz_openapi.py -s`."""

import asyncio
import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path

import grpc
import pytest

from server.auth import Tokens
from server.grpc_server import NodeServer
from tests.fixtures import create_request, running_bridge
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))  # per operation and phase
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
OPERATIONS = 9  # in the document, all but the WebSocket
TOKEN = "fuzz-token-7d1e"

# What the document cannot say: a create for a domain the node cannot read is
# refused with 400 ("No data found", as the original answered) however valid
# the request, and schemathesis draws domain ids at random.
CONFIG = """
max-stream-events = 3

[[operations]]
include-operation-id = "createJob"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""
# A job that exists, so reads, cancels and event streams get past 404 (a
# cancelled one: cancelling it again is harmless, its stream ends at once).
# Retries keep drawing ids, and take none from answers: a retry that succeeded
# would leave a pending job, whose event stream no worker would ever end.
PINNED = """
[[operations]]
include-operation-id = ["cancelJob", "watchJob"]
parameters = {{ "path.id" = "{job_id}" }}

[[operations]]
include-operation-id = "retryJob"
phases.coverage.extra-data-sources.responses = false
phases.fuzzing.extra-data-sources.responses = false
phases.examples.extra-data-sources.responses = false
"""


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "with-a-token"])
async def test_no_request_from_the_openapi_document_gets_a_wrong_answer(settings, tmp_path, token):
    """Open (the default), and with a token: then schemathesis sends it, and
    also checks that requests without it, or with a wrong one, get 401."""
    schemathesis = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    node = NodeServer(dataclasses.replace(settings, auth_tokens=token or ""))
    await node.start()
    auth = [("authorization", f"Bearer {token}")] if token else None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            jobs = jobs_pb2_grpc.JobServiceStub(channel)
            job = (await jobs.CreateJob(create_request(), metadata=auth)).job
            await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id), metadata=auth)
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG + PINNED.format(job_id=job.id))
        async with running_bridge(f"127.0.0.1:{node.port}", tokens=Tokens([token] if token else [])) as base:
            process = await asyncio.create_subprocess_exec(
                schemathesis, "--config-file", str(config), "run", f"{base}/openapi.json",
                "--checks", "all",
                "--phases", "examples,coverage,fuzzing",
                "--max-examples", str(EXAMPLES),
                "--seed", "20261126",
                "--generation-database", "none",
                # A plain HTTP client cannot open a WebSocket (a plain GET of it is 426:
                # tests/test_bridge_rest.py); tests/test_bridge_ws.py drives it.
                "--exclude-path", "/api/v1/ws",
                "--request-timeout", "10",
                "--no-color",
                *(["--header", f"Authorization: Bearer {token}"] if token else []),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
            )
            out, _ = await asyncio.wait_for(process.communicate(), 3000)
    finally:
        await node.stop(grace=0.5)
    text = out.decode(errors="replace")
    assert process.returncode == 0, text
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", text).groups())
    assert generated == passed, text
    assert re.search(rf"Tested: {OPERATIONS}\b", text) and generated >= OPERATIONS * min(EXAMPLES, 10), text
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"schemathesis-summary-{'token' if token else 'open'}.txt").write_text(text[-3000:])
    print(f"schemathesis ({'with a token' if token else 'open'}): {generated} requests, every check passed")
