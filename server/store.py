"""The job store: the only module that talks to PostgreSQL.

Queries are loaded by name from sql/queries.sql; migrations in
sql/migrations/NNN_name.sql are applied in order at start, once, under an
advisory lock so that processes starting together do not race.
"""

import asyncio
import dataclasses
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, AsyncIterator

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from server.errors import BadInput, Conflict, NotFound

log = logging.getLogger(__name__)

STATUSES = ("pending", "running", "completing", "uploading", "completed", "failed", "cancelling", "cancelled")
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
HELD_STATUSES = frozenset({"running", "completing", "uploading", "cancelling"})
MAX_LIST_LIMIT = 1000
MAX_LIST_OFFSET = 10_000_000
MIGRATION_LOCK = 0x766C6D6E  # advisory lock id ("vlmn")
JOB_EVENTS_CHANNEL = "vlmnode_job_events"
JOBS_READY_CHANNEL = "vlmnode_jobs_ready"


def _load_queries() -> dict[str, str]:
    text = resources.files("server").joinpath("sql/queries.sql").read_text()
    parts = re.split(r"^-- (\w+) --$", text, flags=re.M)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


QUERIES = _load_queries()


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("server").joinpath("sql/migrations").iterdir():
        m = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


@dataclass(frozen=True)
class Claim:
    """A job held by a worker; `attempt` fences writes from a lost claim."""

    job: dict[str, Any]
    worker_id: str

    @property
    def id(self) -> uuid.UUID:
        return self.job["id"]

    @property
    def attempt(self) -> int:
        return self.job["attempts"]


@dataclass(frozen=True)
class Caption:
    """One image's caption, as a job keeps it (see save_caption)."""

    image_id: str
    image_updated_at: datetime
    name: str
    taken_at: datetime
    caption: str


def parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"job {job_id!r} not found") from None


class JobStore:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10):
        self.url = url
        self.pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            check=AsyncConnectionPool.check_connection,
            open=False,
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        await self.migrate()

    async def close(self) -> None:
        await self.pool.close()

    async def migrate(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            applied = {row["version"] for row in await cur.fetchall()}
            for version, name, sql in _migrations():
                if version in applied:
                    continue
                log.info("applying migration %03d_%s", version, name)
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )

    async def _one(self, name: str, /, **params: Any) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchone()

    async def _all(self, name: str, /, **params: Any) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchall()

    # Jobs as callers see them.

    async def create_job(
        self,
        *,
        job_type: str,
        domain_id: str,
        query: dict,
        input: dict,
        idempotency_key: str | None = None,
        priority: int = 0,
        max_attempts: int = 5,
    ) -> tuple[dict[str, Any], bool]:
        """Returns the job and whether it was created now (False: an earlier
        create with the same idempotency key)."""
        row = await self._one(
            "create_job",
            job_type=job_type,
            domain_id=domain_id,
            query=Jsonb(query),
            input=Jsonb(input),
            idempotency_key=idempotency_key or None,
            priority=priority,
            max_attempts=max_attempts,
        )
        if row is not None:
            return row, True
        existing = await self._one("get_job_by_idempotency_key", idempotency_key=idempotency_key)
        if existing is None:  # the first job was deleted between the two statements
            raise Conflict("idempotency key in use; try again")
        if existing["job_type"] != job_type:
            raise Conflict(f"idempotency key {idempotency_key!r} was used for a {existing['job_type']} job")
        return existing, False

    async def get_job(self, job_id: str | uuid.UUID) -> dict[str, Any]:
        jid = job_id if isinstance(job_id, uuid.UUID) else parse_job_id(job_id)
        row = await self._one("get_job", id=jid)
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    async def job_events(self, job_id: uuid.UUID) -> list[dict[str, Any]]:
        return await self._all("job_events", id=job_id)

    async def list_jobs(
        self, *, limit: int = 100, offset: int = 0, status: str | None = None, job_type: str | None = None
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadInput(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        if not 0 <= offset <= MAX_LIST_OFFSET:
            raise BadInput(f"offset must be between 0 and {MAX_LIST_OFFSET}, got {offset}")
        if status is not None and status not in STATUSES:
            raise BadInput(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        return await self._all("list_jobs", limit=limit, offset=offset, status=status, job_type=job_type)

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        jid = parse_job_id(job_id)
        row = await self._one("cancel_job", id=jid)
        if row is not None:
            return row
        job = await self.get_job(jid)
        if job["status"] in ("cancelling", "cancelled"):
            return job
        raise Conflict(f"job {job_id} is {job['status']} and cannot be cancelled")

    async def retry_job(self, job_id: str, *, job_type: str, input: dict) -> dict[str, Any]:
        jid = parse_job_id(job_id)
        row = await self._one("retry_job", id=jid, job_type=job_type, input=Jsonb(input))
        if row is not None:
            return row
        job = await self.get_job(jid)
        if job["job_type"] != job_type:
            raise BadInput(f"job {job_id} is a {job['job_type']} job, not {job_type}")
        raise Conflict(f"job {job_id} is {job['status']}; only a finished job can be retried")

    async def ping(self) -> None:
        await self._one("ping")

    async def queue_stats(self) -> tuple[int, float]:
        """Pending jobs that are due, and the age in seconds of the oldest pending one."""
        row = await self._one("queue_stats")
        return row["depth"], row["oldest_seconds"]

    async def count_by_status(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in await self._all("count_jobs_by_status")}

    # Jobs as workers see them.

    async def claim_jobs(self, worker_id: str, job_types: list[str], lease: float, limit: int) -> list[Claim]:
        rows = await self._all("claim_jobs", worker_id=worker_id, job_types=job_types, lease=lease, limit=limit)
        rows.sort(key=lambda r: (-r["priority"], r["run_after"], r["created_at"]))
        return [Claim(row, worker_id) for row in rows]

    async def claim_job(self, worker_id: str, job_types: list[str], lease: float) -> Claim | None:
        claims = await self.claim_jobs(worker_id, job_types, lease, 1)
        return claims[0] if claims else None

    async def next_run_after(self, job_types: list[str]) -> datetime | None:
        row = await self._one("next_run_after", job_types=job_types)
        return row["run_after"] if row else None

    async def renew_lease(self, claim: Claim, lease: float) -> str | None:
        """The job's status, or None when the claim was lost."""
        row = await self._one(
            "renew_lease", id=claim.id, worker_id=claim.worker_id, attempt=claim.attempt, lease=lease
        )
        return row["status"] if row else None

    async def advance_job(self, claim: Claim, status: str) -> dict[str, Any] | None:
        return await self._one(
            "advance_job", id=claim.id, worker_id=claim.worker_id, attempt=claim.attempt, status=status
        )

    async def finish_job(
        self,
        claim: Claim,
        status: str,
        *,
        output: dict | None = None,
        error: dict | None = None,
        retry_in: float = 0.0,
    ) -> dict[str, Any] | None:
        """Ends the attempt; None when the claim was lost meanwhile (the
        result is then dropped: another worker owns the job)."""
        return await self._one(
            "finish_job",
            id=claim.id,
            worker_id=claim.worker_id,
            attempt=claim.attempt,
            status=status,
            output=Jsonb(output) if output is not None else None,
            error=Jsonb(error) if error is not None else None,
            retry_in=retry_in,
        )

    async def save_caption(self, job_id: uuid.UUID, recipe: str, caption: Caption) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(QUERIES["save_caption"], {"job_id": job_id, "recipe": recipe, **dataclasses.asdict(caption)})

    async def captions(self, job_id: uuid.UUID, recipe: str) -> dict[str, Caption]:
        """The captions a job made with `recipe`, by image id."""
        rows = await self._all("job_captions", job_id=job_id, recipe=recipe)
        return {row["image_id"]: Caption(**row) for row in rows}

    async def rescue_jobs(self) -> list[dict[str, Any]]:
        return await self._all("rescue_jobs")

    # Notifications.

    async def listen(self, channel: str, *, reconnect_delay: float = 1.0) -> AsyncIterator[str]:
        """Yields the payload of each notification on `channel`, forever,
        reconnecting when the connection drops. Yields "" after each
        (re)connect, since notifications sent while away are lost."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    yield ""
                    async for note in conn.notifies():
                        yield note.payload
            except psycopg.OperationalError as exc:
                log.warning("lost the listen connection on %s (%s); reconnecting", channel, exc)
                await asyncio.sleep(reconnect_delay)
