"""The job store: the only module that talks to PostgreSQL, and the only one
that sees psycopg's errors. It answers with typed records (server/jobs.py)
and raises the node's own errors: the database away as DatabaseUnavailable
(transient), data it cannot store as BadInput, anything else it refuses as
DatabaseFault.

Queries are loaded by name from sql/queries.sql; migrations in
sql/migrations/NNN_name.sql are applied in order at start, once, under an
advisory lock so that processes starting together do not race.
"""

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from server.errors import (
    DATABASE_UNAVAILABLE,
    BadInput,
    Conflict,
    DatabaseFault,
    DatabaseUnavailable,
    NodeError,
    NotFound,
    quoted,
)
from server.job_status import Status
from server.jobs import Job, JobEvent

log = logging.getLogger(__name__)
# While the database is away the pool tries to reconnect every
# RECONNECT_GIVE_UP seconds and would log each try; the store says it once.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

MAX_LIST_LIMIT = 1000
MAX_LIST_OFFSET = 10_000_000
# The channels of the migrations' jobs_status_changed() notifications.
JOB_EVENTS_CHANNEL = "vlmnode_job_events"
JOBS_READY_CHANNEL = "vlmnode_jobs_ready"

# Connections, and what the store does while the database is away.
POOL_WAIT = 30.0  # seconds a call waits for a connection (a worker's calls: they ride out a restart)
REQUEST_WAIT = 5.0  # seconds a call of a fail-fast store waits for a connection while the database answers
RECONNECT_GIVE_UP = 0.5  # seconds the pool retries a lost connection before starting afresh (so: tries this often)
PING_WAIT = 0.5  # seconds a ping waits for a pooled connection before asking the server directly
CONNECT_TIMEOUT = 5  # seconds to open a connection (whole seconds, libpq's connect_timeout)
PROBE_CONNECT_TIMEOUT = 2  # seconds for a ping's own connection (libpq's least)
NOT_STORABLE = "the request holds text the job database cannot store"
# Dead peers and cut networks are noticed by TCP rather than waited on forever.
TCP_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,  # seconds
    "keepalives_interval": 5,  # seconds
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,  # milliseconds unacknowledged data may wait
}


def _load_queries() -> dict[str, str]:
    text = resources.files("server").joinpath("sql/queries.sql").read_text()
    parts = re.split(r"^-- (\w+) --$", text, flags=re.M)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


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

    job: Job
    worker_id: str

    @property
    def id(self) -> uuid.UUID:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempts


@dataclass(frozen=True)
class Caption:
    """One image's caption, as a job keeps it (see save_caption)."""

    image_id: str
    image_updated_at: datetime
    name: str
    taken_at: datetime
    caption: str


def _job_of(row: DictRow) -> Job:
    return Job(**{**row, "status": Status(row["status"])})


def _said(exc: BaseException) -> str:
    """An error as one line (libpq's messages run over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _connection_lost(exc: psycopg.Error, conn: psycopg.AsyncConnection[DictRow]) -> bool:
    """Whether `exc` says the connection or the server went away (rather than
    a query cancelled, a deadlock or a serialization failure)."""
    return conn.broken or conn.closed or (exc.sqlstate or "").startswith(("08", "57P"))


def parse_job_id(job_id: str | uuid.UUID) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(job_id)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"job {quoted(job_id)} not found") from None


class JobStore:
    """The job database through a pool of connections.

    What it knows of the database: believed up until a ping fails, then
    known down until a ping gets an answer (pings ask the server directly
    while it is down, since the pool may still be waiting to reconnect). A
    store whose database someone keeps probing (the gRPC server's health
    monitor sets `fail_fast`) refuses calls at once while the database is
    known down, and a call waiting for a connection is refused as soon as it
    is found down; otherwise (a worker) calls wait up to POOL_WAIT for a
    connection. A call that meets a lost connection sets `trouble`, so a
    monitor probes at once."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10):
        self.url = url
        self.fail_fast = False
        self.trouble = asyncio.Event()  # set when a call met a lost connection or waited in vain
        self._suspect = False  # the same, for the next ping: ask the server itself
        self._down_since: float | None = None  # monotonic; None while the database is believed up
        self._down = asyncio.Event()  # set while it is known down
        self._up = asyncio.Event()  # set while it is believed up
        self._up.set()
        self._purge_task: asyncio.Task | None = None
        self.pool = AsyncConnectionPool[psycopg.AsyncConnection[DictRow]](
            url,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": True, "connect_timeout": CONNECT_TIMEOUT, **TCP_OPTIONS},
            check=self._check_connection,
            timeout=POOL_WAIT,
            # The pool gives a lost connection up after RECONNECT_GIVE_UP and
            # starts a fresh one (_reconnect_failed), rather than backing off
            # for minutes: a database that is back is found within that.
            reconnect_timeout=RECONNECT_GIVE_UP,
            reconnect_failed=self._reconnect_failed,
            open=False,
        )

    async def open(self) -> None:
        with self._node_errors():
            await self.pool.open(wait=True, timeout=30)
        await self.migrate()

    async def close(self) -> None:
        if self._purge_task is not None:
            self._purge_task.cancel()
        await self.pool.close()

    # What the store knows of the database.

    @property
    def down(self) -> bool:
        """Whether the database is known to be down (a ping found it so)."""
        return self._down_since is not None

    async def wait_for_database(self, timeout: float) -> None:
        """Sleeps `timeout` seconds, or less when the database is known down
        and a ping finds it answering again meanwhile."""
        if not self.down:
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()

    def _found_down(self, exc: BaseException) -> None:
        if self.down:
            return
        self._down_since = time.monotonic()
        self._up.clear()
        self._down.set()
        log.warning("the job database does not answer (%s)%s", _said(exc),
                    ": calls fail at once until it does" if self.fail_fast else "")
        self._purge()

    def _found_up(self) -> None:
        if self._down_since is None:
            return
        log.info("the job database answers again after %.1f s", time.monotonic() - self._down_since)
        self._down_since = None
        self._down.clear()
        self._up.set()
        self._purge()

    def _purge(self) -> None:
        """Checks the idle connections in the background, replacing the broken
        ones (after a restart they all are), so that no call meets them."""
        if self._purge_task is None or self._purge_task.done():
            self._purge_task = asyncio.get_running_loop().create_task(self.pool.check(), name="store-purge")
            self._purge_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _troubled(self) -> None:
        self._suspect = True
        self.trouble.set()

    async def _check_connection(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        """The pool's check of a connection before it hands it out."""
        try:
            await conn.execute("")
        except Exception:
            self._purge()  # those idle beside it are likely broken the same way
            self._troubled()
            raise

    async def _reconnect_failed(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]) -> None:
        # The pool has given a connection up: keep one attempt going, so the
        # pool is ready again as soon as the database is.
        if not pool.closed:
            await pool.check()

    # Connections for calls.

    async def _getconn(self) -> psycopg.AsyncConnection[DictRow]:
        try:
            if not self.fail_fast:
                return await self.pool.getconn()
            if self.down:
                raise DatabaseUnavailable(DATABASE_UNAVAILABLE)
            # Wait for a connection (the pool may be busy, or replacing the
            # broken one it had ready), but only until the database is found down.
            getting = asyncio.ensure_future(self.pool.getconn(REQUEST_WAIT))
            went_down = asyncio.ensure_future(self._down.wait())
            try:
                done, _ = await asyncio.wait((getting, went_down), return_when=asyncio.FIRST_COMPLETED)
            finally:
                went_down.cancel()
                if not getting.done():
                    self._abandon(getting)
            if getting not in done:
                raise DatabaseUnavailable(DATABASE_UNAVAILABLE)
            return getting.result()
        except PoolTimeout as exc:
            self._troubled()
            raise DatabaseUnavailable(f"{DATABASE_UNAVAILABLE} ({_said(exc)})") from exc

    def _abandon(self, getting: asyncio.Future) -> None:
        """Cancels a wait for a connection; one that came meanwhile goes back."""
        def give_back(future: asyncio.Future) -> None:
            if not future.cancelled() and future.exception() is None:
                asyncio.ensure_future(self.pool.putconn(future.result()))

        getting.add_done_callback(give_back)
        getting.cancel()

    @contextlib.contextmanager
    def _node_errors(self, conn: psycopg.AsyncConnection[DictRow] | None = None) -> Iterator[None]:
        """psycopg's errors said as the node's (see the module docstring)."""
        try:
            yield
        except NodeError:
            raise
        except psycopg.DataError as exc:  # e.g. text PostgreSQL cannot store: the caller's to fix
            raise BadInput(NOT_STORABLE) from exc
        except psycopg.OperationalError as exc:
            if conn is not None and not _connection_lost(exc, conn):
                raise DatabaseUnavailable(str(exc)) from exc  # cancelled, deadlocked: worth trying again
            self._troubled()
            lost = "lost the connection: " if conn is not None else ""
            raise DatabaseUnavailable(f"{DATABASE_UNAVAILABLE} ({lost}{_said(exc)})") from exc
        except psycopg.Error as exc:
            log.error("the job database refused a statement: %s", _said(exc), exc_info=exc)
            raise DatabaseFault(f"internal error: {type(exc).__name__}") from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        """A pooled connection for one call, as pool.connection() gives one,
        with psycopg's errors said as the node's."""
        conn = await self._getconn()
        try:
            with self._node_errors(conn):
                async with conn:
                    yield conn
        finally:
            await self.pool.putconn(conn)

    async def migrate(self) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_migrations"])
            await conn.execute(QUERIES["create_schema_migrations"])
            cur = await conn.execute(QUERIES["applied_migrations"])
            applied = {row["version"] for row in await cur.fetchall()}
            for version, name, text in _migrations():
                if version in applied:
                    continue
                log.info("applying migration %03d_%s", version, name)
                await conn.execute(text)
                await conn.execute(QUERIES["record_migration"], {"version": version, "name": name})

    async def _one(self, name: str, /, **params: Any) -> DictRow | None:
        async with self._connection() as conn:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchone()

    async def _all(self, name: str, /, **params: Any) -> list[DictRow]:
        async with self._connection() as conn:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchall()

    async def _job(self, name: str, /, **params: Any) -> Job | None:
        row = await self._one(name, **params)
        return _job_of(row) if row is not None else None

    async def _jobs(self, name: str, /, **params: Any) -> list[Job]:
        return [_job_of(row) for row in await self._all(name, **params)]

    # Jobs as callers see them.

    async def create_job(
        self,
        *,
        job_type: str,
        domain_id: str,
        query: dict[str, Any],
        input: Mapping[str, Any],
        idempotency_key: str | None = None,
        priority: int = 0,
        max_attempts: int = 5,
    ) -> tuple[Job, bool]:
        """Returns the job and whether it was created now (False: an earlier
        create with the same idempotency key)."""
        job = await self._job(
            "create_job",
            job_type=job_type,
            domain_id=domain_id,
            query=Jsonb(query),
            input=Jsonb(dict(input)),
            idempotency_key=idempotency_key or None,
            priority=priority,
            max_attempts=max_attempts,
        )
        if job is not None:
            return job, True
        existing = await self._job("get_job_by_idempotency_key", idempotency_key=idempotency_key)
        if existing is None:  # the first job was deleted between the two statements
            raise Conflict("idempotency key in use; try again")
        if existing.job_type != job_type:
            raise Conflict(f"idempotency key {idempotency_key!r} was used for a {existing.job_type} job")
        return existing, False

    async def get_job(self, job_id: str | uuid.UUID) -> Job:
        job = await self._job("get_job", id=parse_job_id(job_id))
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    async def job_events(self, job_id: uuid.UUID) -> list[JobEvent]:
        return [
            JobEvent(**{**row, "status": Status(row["status"])}) for row in await self._all("job_events", id=job_id)
        ]

    async def list_jobs(
        self, *, limit: int = 100, offset: int = 0, status: str | None = None, job_type: str | None = None
    ) -> list[Job]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise BadInput(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        if not 0 <= offset <= MAX_LIST_OFFSET:
            raise BadInput(f"offset must be between 0 and {MAX_LIST_OFFSET}, got {offset}")
        if status is not None and status not in set(Status):
            raise BadInput(f"unknown status {status!r}; expected one of {', '.join(Status)}")
        return await self._jobs(
            "list_jobs", limit=limit, offset=offset, status=None if status is None else str(status), job_type=job_type
        )

    async def cancel_job(self, job_id: str) -> Job:
        jid = parse_job_id(job_id)
        cancelled = await self._job("cancel_job", id=jid)
        if cancelled is not None:
            return cancelled
        job = await self.get_job(jid)
        if job.status in (Status.CANCELLING, Status.CANCELLED):
            return job
        raise Conflict(f"job {job_id} is {job.status} and cannot be cancelled")

    async def retry_job(self, job_id: str, *, job_type: str, input: Mapping[str, Any]) -> Job:
        jid = parse_job_id(job_id)
        retried = await self._job("retry_job", id=jid, job_type=job_type, input=Jsonb(dict(input)))
        if retried is not None:
            return retried
        job = await self.get_job(jid)
        if job.job_type != job_type:
            raise BadInput(f"job {job_id} is a {job.job_type} job, not {job_type}")
        raise Conflict(f"job {job_id} is {job.status}; only a finished job can be retried")

    async def ping(self) -> None:
        """Returns when the database answers, else raises DatabaseUnavailable;
        either way the store now knows. Asks through the pool while the
        database is believed up, and the server itself when that fails, while
        it is known down, or when a call met a lost connection since the last
        ping."""
        suspect, self._suspect = self._suspect, False
        if not (self.down or suspect):
            try:
                async with self.pool.connection(timeout=PING_WAIT) as conn:
                    await conn.execute(QUERIES["ping"])
                return
            except psycopg.OperationalError:
                pass  # a lost connection or a busy pool: ask the server itself
        try:
            async with await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=PROBE_CONNECT_TIMEOUT, **TCP_OPTIONS
            ) as conn:
                await conn.execute(QUERIES["ping"])
        except psycopg.OperationalError as exc:
            self._found_down(exc)
            raise DatabaseUnavailable(f"the job database does not answer: {_said(exc)}") from exc
        self._found_up()

    async def queue_stats(self) -> tuple[int, float]:
        """Pending jobs that are due, and the age in seconds of the oldest pending one."""
        row = await self._one("queue_stats")
        assert row is not None  # an aggregate: always one row
        return row["depth"], row["oldest_seconds"]

    async def count_by_status(self) -> dict[Status, int]:
        return {Status(row["status"]): row["n"] for row in await self._all("count_jobs_by_status")}

    # Jobs as workers see them.

    async def claim_jobs(self, worker_id: str, job_types: list[str], lease: float, limit: int) -> list[Claim]:
        jobs = await self._jobs("claim_jobs", worker_id=worker_id, job_types=job_types, lease=lease, limit=limit)
        jobs.sort(key=lambda job: (-job.priority, job.queued_at))
        return [Claim(job, worker_id) for job in jobs]

    async def claim_job(self, worker_id: str, job_types: list[str], lease: float) -> Claim | None:
        claims = await self.claim_jobs(worker_id, job_types, lease, 1)
        return claims[0] if claims else None

    async def next_run_after(self, job_types: list[str]) -> datetime | None:
        row = await self._one("next_run_after", job_types=job_types)
        return row["run_after"] if row else None

    async def renew_lease(self, claim: Claim, lease: float) -> Status | None:
        """The job's status, or None when the claim was lost."""
        row = await self._one(
            "renew_lease", id=claim.id, worker_id=claim.worker_id, attempt=claim.attempt, lease=lease
        )
        return Status(row["status"]) if row else None

    async def advance_job(self, claim: Claim, status: Status) -> Job | None:
        return await self._job(
            "advance_job", id=claim.id, worker_id=claim.worker_id, attempt=claim.attempt, status=Status(status).value
        )

    async def finish_job(
        self,
        claim: Claim,
        status: Status,
        *,
        output: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        retry_in: float = 0.0,
        failed: bool = False,
    ) -> Job | None:
        """Ends the attempt; None when the claim was lost meanwhile (the
        result is then dropped: another worker owns the job). `failed`: the
        attempt failed, and counts in the job's run of failures
        (`failing_since`, `failures`); completing ends the run."""
        return await self._job(
            "finish_job",
            id=claim.id,
            worker_id=claim.worker_id,
            attempt=claim.attempt,
            status=Status(status).value,
            output=Jsonb(output) if output is not None else None,
            error=Jsonb(error) if error is not None else None,
            retry_in=retry_in,
            failed=failed,
        )

    async def end_failing_streak(self, claim: Claim) -> None:
        """The held attempt made progress: the job is no longer failing, and
        its retry budget starts afresh at its next failure."""
        await self._one("end_failing_streak", id=claim.id, worker_id=claim.worker_id, attempt=claim.attempt)

    async def save_caption(self, job_id: uuid.UUID, recipe: str, caption: Caption) -> None:
        async with self._connection() as conn:
            await conn.execute(QUERIES["save_caption"], {"job_id": job_id, "recipe": recipe, **dataclasses.asdict(caption)})

    async def captions(self, job_id: uuid.UUID, recipe: str) -> dict[str, Caption]:
        """The captions a job made with `recipe`, by image id."""
        rows = await self._all("job_captions", job_id=job_id, recipe=recipe)
        return {row["image_id"]: Caption(**row) for row in rows}

    async def rescue_jobs(self, retry_for: float | None = None) -> list[Job]:
        """Takes back the jobs whose lease ran out: pending again in their
        place, or failed when out of attempts or failing for `retry_for`
        seconds or more."""
        return await self._jobs("rescue_jobs", retry_for=retry_for)

    # Notifications.

    async def listen(self, channel: str, *, reconnect_delay: float = 1.0) -> AsyncIterator[str]:
        """Yields the payload of each notification on `channel`, forever,
        reconnecting when the connection drops. Yields "" after each
        (re)connect, since notifications sent while away are lost."""
        lost_at: float | None = None
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **TCP_OPTIONS
                ) as conn:
                    await conn.execute(sql.SQL(QUERIES["listen"]).format(channel=sql.Identifier(channel)))
                    if lost_at is not None:
                        log.info("listening on %s again after %.1f s", channel, time.monotonic() - lost_at)
                        lost_at = None
                    yield ""
                    async for note in conn.notifies():
                        yield note.payload
            except psycopg.OperationalError as exc:
                if lost_at is None:  # said once; tried again every reconnect_delay until it works
                    lost_at = time.monotonic()
                    log.warning("lost the listen connection on %s (%s); reconnecting", channel, _said(exc))
                await asyncio.sleep(reconnect_delay)
