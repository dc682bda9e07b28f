"""The job queue through a real PostgreSQL."""

import asyncio
import re
import uuid
from importlib import resources

import pytest

from server import store as store_module
from server.errors import BadInput, Conflict, DatabaseFault, NotFound
from server.job_status import FINAL, HELD, Status, status_from_proto, status_to_proto
from server.store import JOB_EVENTS_CHANNEL, JOBS_READY_CHANNEL, QUERIES, JobStore
from vlmnode.v1 import jobs_pb2

TYPES = ["task_timing_v1", "vlm_only"]


async def create(store, **kw):
    args = dict(job_type="vlm_only", domain_id="d", query={"ids": []}, input={"vlm_prompt": "p"})
    args.update(kw)
    job, _ = await store.create_job(**args)
    return job


async def test_lifecycle_records_every_status(store):
    job = await create(store)
    assert job.status == "pending" and job.attempts == 0
    claim = await store.claim_job("w1", TYPES, lease=30)
    assert claim.id == job.id and claim.attempt == 1
    assert (await store.advance_job(claim, "completing")).status == "completing"
    assert (await store.advance_job(claim, "uploading")).status == "uploading"
    done = await store.finish_job(claim, "completed", output={"responses": []})
    assert done.status == "completed" and done.output == {"responses": []}
    assert done.worker_id is None and done.lease_until is None
    events = [e.status for e in await store.job_events(job.id)]
    assert events == ["pending", "running", "completing", "uploading", "completed"]


async def test_claim_takes_only_due_jobs_of_known_types(store):
    await create(store, job_type="other_type")
    assert await store.claim_job("w1", TYPES, lease=30) is None
    job = await create(store)
    claim = await store.claim_job("w1", TYPES, lease=30)
    await store.finish_job(claim, "pending", error={"code": "x", "message": "later"}, retry_in=60)
    assert await store.claim_job("w1", TYPES, lease=30) is None
    assert (await store.get_job(str(job.id))).run_after > job.run_after


async def test_priority_then_age(store):
    low = await create(store)
    high = await create(store, priority=5)
    first = await store.claim_job("w", TYPES, lease=30)
    second = await store.claim_job("w", TYPES, lease=30)
    assert [first.id, second.id] == [high.id, low.id]


async def test_concurrent_claimers_never_share_a_job(database_url):
    seed = JobStore(database_url)
    await seed.open()
    for _ in range(200):
        await create(seed)
    stores = [JobStore(database_url, max_size=2) for _ in range(8)]
    for s in stores:
        await s.open()
    taken: list[uuid.UUID] = []

    async def drain(s: JobStore, name: str):
        while claim := await s.claim_job(name, TYPES, lease=30):
            taken.append(claim.id)
            await s.finish_job(claim, "completed", output={})

    await asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate(stores)))
    assert len(taken) == 200 and len(set(taken)) == 200
    assert await seed.count_by_status() == {"completed": 200}
    for s in stores + [seed]:
        await s.close()


async def test_lost_claim_cannot_write(store):
    await create(store, max_attempts=3)
    stale = await store.claim_job("w1", TYPES, lease=0.05)
    await asyncio.sleep(0.1)
    rescued = await store.rescue_jobs()
    assert [r.status for r in rescued] == ["pending"]
    fresh = await store.claim_job("w2", TYPES, lease=30)
    assert fresh.id == stale.id and fresh.attempt == 2
    # The first worker wakes up: its renewals and results are refused.
    assert await store.renew_lease(stale, 30) is None
    assert await store.finish_job(stale, "completed", output={"late": True}) is None
    assert await store.advance_job(stale, "completing") is None
    done = await store.finish_job(fresh, "completed", output={"ok": True})
    assert done.output == {"ok": True}


async def test_rescue_fails_a_job_out_of_attempts(store):
    job = await create(store, max_attempts=1)
    await store.claim_job("w1", TYPES, lease=0.01)
    await asyncio.sleep(0.05)
    await store.rescue_jobs()
    failed = await store.get_job(str(job.id))
    assert failed.status == "failed"
    assert failed.error["code"] == "lease_expired"
    assert failed.error["message"] == "worker w1 stopped renewing its lease (max_attempts 1 reached)"


async def test_renewal_keeps_a_job(store):
    await create(store)
    claim = await store.claim_job("w1", TYPES, lease=0.2)
    for _ in range(3):
        await asyncio.sleep(0.1)
        assert await store.renew_lease(claim, 0.2) == "running"
        assert await store.rescue_jobs() == []


async def test_cancel_pending_and_running(store):
    pending = await create(store)
    assert (await store.cancel_job(str(pending.id))).status == "cancelled"
    running = await create(store)
    claim = await store.claim_job("w1", TYPES, lease=30)
    assert claim.id == running.id
    assert (await store.cancel_job(str(running.id))).status == "cancelling"
    assert (await store.cancel_job(str(running.id))).status == "cancelling"  # idempotent
    assert await store.renew_lease(claim, 30) == "cancelling"
    # A failure or retry of a job asked to stop ends as cancelled.
    ended = await store.finish_job(claim, "pending", error={"code": "cancelled", "message": "stop"})
    assert ended.status == "cancelled"


async def test_cancel_finished_job_is_refused(store):
    job = await create(store)
    claim = await store.claim_job("w1", TYPES, lease=30)
    await store.finish_job(claim, "completed", output={})
    with pytest.raises(Conflict, match="completed"):
        await store.cancel_job(str(job.id))


async def test_retry_rules(store):
    job = await create(store)
    with pytest.raises(Conflict, match="pending"):
        await store.retry_job(str(job.id), job_type="vlm_only", input={})
    claim = await store.claim_job("w1", TYPES, lease=30)
    with pytest.raises(Conflict, match="running"):
        await store.retry_job(str(job.id), job_type="vlm_only", input={})
    await store.finish_job(claim, "failed", error={"code": "x", "message": "boom"})
    with pytest.raises(BadInput, match="vlm_only job"):
        await store.retry_job(str(job.id), job_type="task_timing_v1", input={})
    again = await store.retry_job(str(job.id), job_type="vlm_only", input={"vlm_prompt": "new"})
    assert again.status == "pending" and again.attempts == 0
    assert again.input == {"vlm_prompt": "new"} and again.error is None
    with pytest.raises(NotFound):
        await store.retry_job(str(uuid.uuid4()), job_type="vlm_only", input={})


async def test_idempotency_key_returns_the_first_job(store):
    first, created = await store.create_job(
        job_type="vlm_only", domain_id="d", query={}, input={"a": 1}, idempotency_key="k1"
    )
    again, created_again = await store.create_job(
        job_type="vlm_only", domain_id="d", query={}, input={"a": 2}, idempotency_key="k1"
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="idempotency key"):
        await store.create_job(job_type="task_timing_v1", domain_id="d", query={}, input={}, idempotency_key="k1")
    assert len(await store.list_jobs()) == 1


async def test_list_filters_and_bounds(store):
    a = await create(store)
    b = await create(store, job_type="task_timing_v1")
    await store.cancel_job(str(a.id))
    assert [j.id for j in await store.list_jobs()] == [b.id, a.id]
    assert [j.id for j in await store.list_jobs(status="cancelled")] == [a.id]
    assert [j.id for j in await store.list_jobs(job_type="task_timing_v1")] == [b.id]
    assert [j.id for j in await store.list_jobs(limit=1, offset=1)] == [a.id]
    assert await store.list_jobs(job_type="'; DROP TABLE jobs; --") == []
    for kwargs in ({"limit": 0}, {"limit": 10**6}, {"offset": -1}, {"offset": 10**12}, {"status": "done"}):
        with pytest.raises(BadInput):
            await store.list_jobs(**kwargs)
    assert len(await store.list_jobs()) == 2


async def test_unknown_and_malformed_ids(store):
    with pytest.raises(NotFound):
        await store.get_job(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        await store.get_job("not-a-uuid")
    with pytest.raises(NotFound):
        await store.cancel_job("")


async def test_notifications_wake_listeners(store):
    ready = store.listen(JOBS_READY_CHANNEL)
    events = store.listen(JOB_EVENTS_CHANNEL)
    assert await anext(ready) == "" and await anext(events) == ""  # connected
    job = await create(store)
    assert await asyncio.wait_for(anext(ready), 5) == "vlm_only"
    assert await asyncio.wait_for(anext(events), 5) == f"{job.id} pending"
    await store.cancel_job(str(job.id))
    assert await asyncio.wait_for(anext(events), 5) == f"{job.id} cancelled"
    await ready.aclose()
    await events.aclose()


async def test_migrations_apply_once(store):
    await store.migrate()
    await store.migrate()
    await create(store)
    assert len(await store.list_jobs()) == 1


async def test_claim_several_at_once(store):
    for priority in (0, 2, 1, 0):
        await create(store, priority=priority)
    claims = await store.claim_jobs("w1", TYPES, lease=30, limit=3)
    assert [c.job.priority for c in claims] == [2, 1, 0]
    assert len(await store.claim_jobs("w2", TYPES, lease=30, limit=10)) == 1


# Retries that wait out a failure, and jobs that keep their place.


async def sql(store, statement: str, *params):
    """Runs a statement on the test's database (to set the scene), returning its rows."""
    async with store.pool.connection() as conn:
        cur = await conn.execute(statement, params or None)
        return await cur.fetchall() if cur.description else []


async def test_a_rescued_job_is_claimed_before_newer_jobs(store):
    old = await create(store)
    await store.claim_job("dead-worker", TYPES, lease=0.01)
    newer = [await create(store) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert [r.status for r in await store.rescue_jobs()] == ["pending"]
    rescued = await store.get_job(old.id)
    assert rescued.run_after > newer[-1].run_after  # due only now, yet first in line
    order = [(await store.claim_job("w", TYPES, lease=30)).id for _ in range(4)]
    assert order == [old.id] + [j.id for j in newer]


async def test_a_job_retried_after_a_failure_keeps_its_place(store):
    old = await create(store)
    claim = await store.claim_job("w1", TYPES, lease=30)
    newer = await create(store)
    await store.finish_job(claim, "pending", error={"code": "peer_unavailable", "message": "down"}, failed=True)
    assert [c.id for c in await store.claim_jobs("w1", TYPES, lease=30, limit=2)] == [old.id, newer.id]


async def test_a_job_waiting_out_a_failure_is_passed_over_until_due(store):
    old = await create(store)
    claim = await store.claim_job("w1", TYPES, lease=30)
    await store.finish_job(claim, "pending", error={"code": "x", "message": "later"}, retry_in=60, failed=True)
    newer = await create(store)
    assert (await store.claim_job("w1", TYPES, lease=30)).id == newer.id
    assert await store.claim_job("w1", TYPES, lease=30) is None
    assert (await store.next_run_after(TYPES)) == (await store.get_job(old.id)).run_after


async def test_a_put_retry_queues_the_job_anew(store):
    first = await create(store)
    claim = await store.claim_job("w1", TYPES, lease=30)
    await store.finish_job(claim, "failed", error={"code": "x", "message": "boom"}, failed=True)
    waiting = await create(store)
    again = await store.retry_job(str(first.id), job_type="vlm_only", input={"vlm_prompt": "again"})
    assert again.queued_at > waiting.queued_at and again.created_at == first.created_at
    assert again.failing_since is None and again.failures == 0 and again.attempts == 0
    order = [(await store.claim_job("w", TYPES, lease=30)).id for _ in range(2)]
    assert order == [waiting.id, first.id]  # behind the job already waiting, as a new job would be


async def test_priority_still_comes_first(store):
    old = await create(store)
    claim = await store.claim_job("w1", TYPES, lease=30)
    urgent = await create(store, priority=1)
    await store.finish_job(claim, "pending", error={"code": "x", "message": "again"}, failed=True)
    assert [c.id for c in await store.claim_jobs("w1", TYPES, lease=30, limit=2)] == [urgent.id, old.id]


async def test_a_run_of_failures_is_counted_until_progress_or_success(store):
    job = await create(store, max_attempts=10)

    async def fail(claim, **kw):
        return await store.finish_job(claim, "pending", error={"code": "x", "message": "down"}, **kw)

    first = await fail(await store.claim_job("w1", TYPES, lease=30), failed=True)
    assert first.failures == 1 and first.failing_since is not None
    second = await fail(await store.claim_job("w1", TYPES, lease=30), failed=True)
    assert second.failures == 2 and second.failing_since == first.failing_since
    handed_back = await fail(await store.claim_job("w1", TYPES, lease=30))  # not a failure: a worker stopping
    assert handed_back.failures == 2 and handed_back.failing_since == first.failing_since
    # Progress (a caption kept) ends the run; the next failure starts another.
    claim = await store.claim_job("w1", TYPES, lease=30)
    await store.end_failing_streak(claim)
    assert (await store.get_job(job.id)).failing_since is None
    third = await fail(claim, failed=True)
    assert third.failures == 1 and third.failing_since > first.failing_since
    # A lost lease counts as a failure too.
    await store.claim_job("w1", TYPES, lease=0.01)
    await asyncio.sleep(0.05)
    await store.rescue_jobs()
    rescued = await store.get_job(job.id)
    assert rescued.status == "pending" and rescued.failures == 2
    assert rescued.failing_since == third.failing_since
    done = await store.finish_job(await store.claim_job("w1", TYPES, lease=30), "completed", output={})
    assert done.failing_since is None and done.failures == 0


async def test_a_stale_claim_cannot_end_the_run_of_failures(store):
    job = await create(store)
    stale = await store.claim_job("w1", TYPES, lease=0.01)
    await asyncio.sleep(0.05)
    await store.rescue_jobs()
    await store.end_failing_streak(stale)
    assert (await store.get_job(job.id)).failures == 1


async def test_rescue_fails_a_job_failing_for_longer_than_its_budget(store):
    job = await create(store, max_attempts=100)
    await sql(store, "UPDATE jobs SET failing_since = now() - interval '20 minutes', failures = 7 WHERE id = %s",
              job.id)
    await store.claim_job("w1", TYPES, lease=0.01)
    await asyncio.sleep(0.05)
    assert [r.status for r in await store.rescue_jobs(retry_for=3600)] == ["pending"]  # an hour's budget
    await store.claim_job("w1", TYPES, lease=0.01)
    await asyncio.sleep(0.05)
    assert [r.status for r in await store.rescue_jobs(retry_for=900)] == ["failed"]
    failed = await store.get_job(job.id)
    assert failed.error["code"] == "lease_expired"
    assert re.fullmatch(r"worker w1 stopped renewing its lease \(retried for 20 min \d s over 9 attempts\)",
                        failed.error["message"]), failed.error["message"]


async def test_the_claim_query_uses_the_claim_index(store):
    """Thousands of jobs, most of them finished, some waiting out a failure:
    the claim walks the partial index in claim order, and is not sorted."""
    await sql(store, """
        INSERT INTO jobs (job_type, status, priority, queued_at, run_after)
        SELECT 'vlm_only',
               CASE WHEN n % 10 = 0 THEN 'pending' ELSE 'completed' END,
               n % 3,
               now() - make_interval(secs => n),
               now() + CASE WHEN n % 20 = 0 THEN interval '1 hour' ELSE interval '0' END
        FROM generate_series(1, 20000) AS n""")
    await sql(store, "ANALYZE jobs")
    async with store.pool.connection() as conn:
        params = {"worker_id": "w", "job_types": TYPES, "lease": 30, "limit": 1}
        cur = await conn.execute("EXPLAIN " + QUERIES["claim_jobs"], params)
        plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
    print(plan)
    assert "Index Scan using jobs_claim_idx" in plan and "Sort" not in plan, plan
    # The longest waiting due jobs of the highest priority; those not yet due passed over.
    expected = await sql(store, """SELECT id FROM jobs WHERE status = 'pending' AND priority = 2
        AND run_after <= now() ORDER BY queued_at LIMIT 3""")
    claims = await store.claim_jobs("w", TYPES, lease=30, limit=3)
    assert [c.id for c in claims] == [row["id"] for row in expected]


# The statuses, defined once (server/job_status.py), against the other places
# that name them: the SQL, the migrations and the proto.

SQL = resources.files("server").joinpath("sql")
MIGRATIONS = "\n".join(f.read_text() for f in sorted(SQL.joinpath("migrations").iterdir(), key=lambda f: f.name)
                       if f.name.endswith(".sql"))


def status_literals(text: str) -> set[str]:
    """The string literals that SQL compares a status with, or sets one to."""
    found = set(re.findall(r"status(?:\)s)?\s*(?:=|<>|!=)\s*'(\w+)'", text))
    for listed in re.findall(r"status\s+IN\s*\(([^)]*)\)", text, flags=re.I):
        found |= set(re.findall(r"'(\w+)'", listed))
    for case in re.findall(r"status\s*=\s*CASE\b(.*?)\bEND\b", text, flags=re.S):
        found |= set(re.findall(r"(?:THEN|ELSE)\s+'(\w+)'", case))
    found |= set(re.findall(r"status\s+text\s+NOT NULL\s+DEFAULT\s+'(\w+)'", text))
    return found


def test_the_sql_names_only_statuses_there_are():
    queries = status_literals(SQL.joinpath("queries.sql").read_text())
    assert queries and queries <= set(Status), queries - set(Status)
    migrations = status_literals(MIGRATIONS)
    assert migrations and migrations <= set(Status), migrations - set(Status)
    # The lists of the statuses a worker holds are HELD, whole.
    for listed in re.findall(r"status\s+IN\s*\(([^)]*'cancelling'[^)]*)\)", SQL.joinpath("queries.sql").read_text()):
        assert set(re.findall(r"'(\w+)'", listed)) == HELD, listed


async def test_the_migrations_check_allows_the_statuses_and_no_other(store):
    [row] = await sql(store, """SELECT pg_get_constraintdef(oid) AS check FROM pg_constraint
        WHERE conrelid = 'jobs'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%'""")
    assert set(re.findall(r"'(\w+)'::text", row["check"])) == set(Status), row["check"]


def test_the_proto_names_each_status_once():
    named = set(jobs_pb2.JobStatus.keys()) - {"JOB_STATUS_UNSPECIFIED"}
    assert named == {f"JOB_STATUS_{status.name}" for status in Status}
    for status in Status:
        assert status.value == status.name.lower()  # clients take the proto's names, lower-cased
        assert status_from_proto(status_to_proto(status)) is status
    assert status_from_proto(jobs_pb2.JOB_STATUS_UNSPECIFIED) is None
    with pytest.raises(BadInput, match="unknown status 99; expected one of pending, running, completing"):
        status_from_proto(99)
    assert FINAL | HELD | {Status.PENDING} == set(Status) and not FINAL & HELD


def test_the_channels_listened_on_are_the_migrations_notifications():
    assert set(re.findall(r"pg_notify\('(\w+)'", MIGRATIONS)) == {JOB_EVENTS_CHANNEL, JOBS_READY_CHANNEL}


async def test_psycopg_errors_leave_the_store_as_the_nodes(store, monkeypatch, caplog):
    """Text PostgreSQL cannot store is the caller's to fix; a statement it
    refuses is the node's fault, logged here. (The database away:
    tests/test_database_outage.py.)"""
    with pytest.raises(BadInput, match="^the request holds text the job database cannot store$"):
        await create(store, input={"vlm_prompt": "a\x00b"})
    monkeypatch.setitem(store_module.QUERIES, "get_job", "SELECT no_such_column FROM jobs WHERE id = %(id)s")
    with pytest.raises(DatabaseFault) as info:
        await store.get_job(uuid.uuid4())
    assert info.value.message == "internal error: UndefinedColumn" and info.value.public_message == "internal error"
    assert "the job database refused a statement" in caplog.text and "no_such_column" in caplog.text
