"""Shared fixtures: a real PostgreSQL (POSTGRES_URL, or a private server the
session starts), and a fresh migrated database for every test."""

import os
import uuid

import psycopg
import pytest

from server.embedded_postgres import EmbeddedPostgres
from server.store import JobStore


def _with_db(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


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


@pytest.fixture(scope="session")
def template_db(postgres_url):
    """A migrated database that each test's database is copied from."""
    import asyncio

    name = f"vlmnode_tmpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    async def migrate():
        store = JobStore(_with_db(postgres_url, name), max_size=1)
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
    yield _with_db(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(database_url):
    s = JobStore(database_url)
    await s.open()
    yield s
    await s.close()
