"""Shared fixtures: a real PostgreSQL (POSTGRES_URL, or a private server the
session starts), and a fresh migrated database for every test."""

import asyncio
import contextlib
import dataclasses
import inspect
import os
import socket
import subprocess
import sys
import uuid

import psycopg
import pytest

from server.embedded_postgres import EmbeddedPostgres, with_database
from server.store import JobStore


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
    import asyncio

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

DOMAIN_ID = "23d60e61-6978-4f6b-a59d-9ffa027755fc"
COLOURS = ["white", "red", "red", "blue", "red", "green"]


@pytest.fixture
def fake_ollama():
    """Ollama with the default models, and gemma3 for a VLM that sees several images at once."""
    from devpeers.fake_ollama import DEFAULT_MODELS, FakeOllama

    with FakeOllama([*DEFAULT_MODELS, "gemma3:4b"]) as server:
        yield server


@pytest.fixture
def posemesh():
    """A posemesh with one domain of six photos, one a minute, named as
    glasses apps name them so their time comes from the name, beside what
    real domains also hold: a sensor log, a manifest and a 200 MiB scan."""
    from devpeers.images import solid_jpeg
    from devpeers.fake_posemesh import FakePosemesh

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


@contextlib.asynccontextmanager
async def running_worker(settings, pipelines=None):
    """A worker running in this test's event loop until the block ends; with
    `pipelines`, a worker of those, which use no peer."""
    import asyncio

    from server.peers import domain_client, ollama_engine
    from worker.pipelines import PIPELINES, Peers
    from worker.runner import Worker

    store = JobStore(settings.postgres_url, max_size=4)
    await store.open()
    if pipelines is None:
        peers = Peers(settings=settings, engine=ollama_engine(settings), domain=domain_client(settings))
    else:
        peers = Peers(settings=settings, engine=None, domain=None)
    w = Worker(store, peers, worker_name="test-worker", pipelines=pipelines or PIPELINES)
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, 10)
        for peer in (peers.engine, peers.domain):
            if peer is not None:
                await peer.aclose()
        await store.close()


@pytest.fixture
async def worker(settings):
    async with running_worker(settings) as w:
        yield w


@contextlib.asynccontextmanager
async def running_bridge(target: str, settings=None, **app_options):
    """The bridge app under uvicorn, in this test's event loop, on a free
    local port, configured as `python -m server.bridge.main` configures it.
    Yields its base URL."""
    import asyncio
    import socket

    import uvicorn

    from server.bridge.app import create_app
    from server.bridge.main import uvicorn_options
    from server.config import Settings

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that
    # say so, and without it each answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    options = uvicorn_options(settings or Settings())
    app = create_app(target, **app_options)
    config = uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=2, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


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


def settings_env(settings, **overrides) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "OLLAMA_", "JOB_"))}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value not in ("", None):
            env[f.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def start_worker(settings, **overrides) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.main"], env=settings_env(settings, **overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate, timeout: float = 15.0, every: float = 0.05):
    """Polls `predicate` (plain or async) until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout

    async def check():
        result = predicate()
        return await result if inspect.isawaitable(result) else result

    while not (result := await check()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)
    return result


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)
