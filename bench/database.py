"""A fresh, migrated database for a benchmark: on POSTGRES_URL when set,
else on a private server started for the run."""

import os
import uuid
from contextlib import asynccontextmanager

import psycopg

from server.embedded_postgres import EmbeddedPostgres, with_database
from server.store import JobStore


@asynccontextmanager
async def fresh_store(**pool):
    pg = None
    admin = os.environ.get("POSTGRES_URL")
    if not admin:
        pg = EmbeddedPostgres()
        admin = pg.start()
    name = f"vlmnode_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    store = JobStore(with_database(admin, name), **pool)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if pg:
            pg.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
