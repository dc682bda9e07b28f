"""Shared fixtures: a real PostgreSQL (POSTGRES_URL, or a private server the
session starts), a fresh migrated database for every test, the fake peers,
the node, and Chromium. Helpers that are not fixtures are in fixtures.py."""

import asyncio
import os
import subprocess
import uuid

import psycopg
import pytest

from server.embedded_postgres import EmbeddedPostgres, with_database
from server.store import JobStore
from tests.fixtures import COLOURS, DOMAIN_ID, running_worker


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a server we may create databases on."""
    if url := os.environ.get("POSTGRES_URL"):
        yield url
        return
    pg = EmbeddedPostgres(fast=True)
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture
def open_dir():
    """A folder every user may enter, for a private PostgreSQL of its own: as
    root the server runs as the postgres user, who cannot enter pytest's
    tmp_path (under a mode 0700 folder)."""
    import shutil
    import tempfile
    from pathlib import Path

    path = tempfile.mkdtemp(prefix="vlmnode-test-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(postgres_url):
    """A migrated database that each test's database is copied from."""

    name = f"vlmnode_tmpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    async def migrate():
        store = JobStore(with_database(postgres_url, name), max_size=1)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_url, template_db):
    name = f"vlmnode_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(database_url):
    s = JobStore(database_url)
    await s.open()
    yield s
    await s.close()


# Peers: small real HTTP servers speaking the real protocols.

@pytest.fixture
def fake_ollama():
    """Ollama with the default models, and gemma3 for a VLM that sees several images at once."""
    from devpeers.fake_ollama import DEFAULT_MODELS, FakeOllama

    with FakeOllama([*DEFAULT_MODELS, "gemma3:4b"]) as server:
        yield server


@pytest.fixture
def fake_openai():
    """An OpenAI-compatible server (as vLLM) serving a VLM and an LLM, with 4 slots."""
    from devpeers.fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def posemesh():
    """A posemesh with one domain of six photos, one a minute, named as
    glasses apps name them so their time comes from the name, beside what
    real domains also hold: a sensor log, a manifest and a 200 MiB scan."""
    from devpeers.fake_posemesh import FakePosemesh
    from devpeers.images import solid_jpeg

    with FakePosemesh() as server:
        server.add_domain(DOMAIN_ID)
        for minute, colour in enumerate(COLOURS):
            server.add_item(DOMAIN_ID, f"photo_req_{minute}_20250810_16{40 + minute:02d}00", solid_jpeg(colour))
        server.add_sensor_log(DOMAIN_ID)
        server.add_manifest(DOMAIN_ID)
        server.add_scan(DOMAIN_ID, size=200 * 1024 * 1024)
        yield server


@pytest.fixture
def webhook():
    from devpeers.webhook_receiver import WebhookReceiver

    with WebhookReceiver(secret="s3cret") as receiver:
        yield receiver


@pytest.fixture
def settings(database_url, fake_ollama, posemesh):
    from server.config import Settings

    return Settings(
        postgres_url=database_url,
        ollama_host=fake_ollama.url,
        api_url=posemesh.api_url,
        dds_url=posemesh.dds_url,
        posemesh_email=posemesh.email,
        posemesh_password=posemesh.password,
        grpc_host="127.0.0.1",
        grpc_port=0,
        job_lease=2.0,
        job_retry_wait=0.05,
        webhook_secret="s3cret",
        webhook_allow_networks="127.0.0.0/8",  # the test webhook receivers listen on 127.0.0.1
        webhook_attempts=3,
        metrics_port=0,
        worker_health_port=0,
    )


@pytest.fixture
async def node(settings):
    """The gRPC server, started in this test's event loop."""
    from server.grpc_server import NodeServer

    server = NodeServer(settings)
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest.fixture
async def jobs(node):
    import grpc

    from vlmnode.v1 import jobs_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


@pytest.fixture
async def worker(settings):
    async with running_worker(settings) as w:
        yield w


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A CA, and a certificate it signed for localhost and 127.0.0.1."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    folder = tmp_path_factory.mktemp("tls")
    paths = {name: folder / name for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    cert.cert_chain_pems[0].write_to_path(paths["cert.pem"])
    cert.private_key_pem.write_to_path(paths["key.pem"])
    return {name: str(path) for name, path in paths.items()}


# Real processes.


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


# Chromium, for the console's pages and the original node's UI.

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _need(what: str) -> None:
    message = f"this test needs {what}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: failing instead of skipping)")
    pytest.skip(message)


@pytest.fixture
async def chromium():
    """Launches chromium with extra arguments; closes what it launched."""
    if not os.access(CHROMIUM, os.X_OK):
        _need(f"Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _need("the playwright Python package (pip install -e '.[dev]')")
    async with async_playwright() as playwright:
        browsers = []

        async def launch(*extra_args):
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
            browsers.append(browser)
            return browser

        try:
            yield launch
        finally:
            for browser in browsers:
                await browser.close()


# A real model server.


@pytest.fixture(scope="session")
def llama_server():
    """llama.cpp's llama-server with Gemma 3 270M, two slots, for the session;
    skipped where it is not installed (scripts/ensure-llama-server.sh), except
    under CI=true, where that fails."""
    from devpeers.llama_server import LlamaServer, Unavailable

    try:
        server = LlamaServer(slots=2)
        server.start()
    except Unavailable as exc:
        _need(f"a real llama-server: {exc}")
        raise  # not reached: _need skips or fails
    try:
        yield server
    finally:
        server.stop()
