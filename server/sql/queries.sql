-- All SQL of the node, as named queries: `-- name --`, a comment saying what
-- it does, then the statement. Loaded by server/store.py. The status
-- literals are server/job_status.py's Status (tests/test_store.py checks).

-- lock_migrations --
-- Held until the migrating transaction ends, so that processes starting
-- together migrate one after the other. The id is "vlmn" (0x766C6D6E).
SELECT pg_advisory_xact_lock(1986817390);

-- create_schema_migrations --
-- The migrations applied, by their number (sql/migrations/NNN_name.sql).
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- applied_migrations --
SELECT version FROM schema_migrations;

-- record_migration --
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- listen --
-- Receive the notifications of a channel (see the migrations' trigger
-- jobs_status_changed); the channel goes in as an identifier.
LISTEN {channel};

-- create_job --
-- Insert a job; with an idempotency key already used, insert nothing.
INSERT INTO jobs (job_type, domain_id, query, input, idempotency_key, priority, max_attempts)
VALUES (%(job_type)s, %(domain_id)s, %(query)s, %(input)s, %(idempotency_key)s, %(priority)s, %(max_attempts)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING *;

-- get_job_by_idempotency_key --
SELECT * FROM jobs WHERE idempotency_key = %(idempotency_key)s;

-- get_job --
SELECT * FROM jobs WHERE id = %(id)s;

-- list_jobs --
-- Newest first; each filter applies only when given.
SELECT * FROM jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
ORDER BY created_at DESC, id
LIMIT %(limit)s OFFSET %(offset)s;

-- job_events --
-- A job's status history, oldest first.
SELECT status, attempt, error, at FROM job_events WHERE job_id = %(id)s ORDER BY id;

-- claim_jobs --
-- Take up to `limit` of the best due pending jobs of the given types:
-- highest priority, then longest in the queue (a rescued or retried job
-- keeps its place: run_after only says "not before"). Concurrent claimers
-- skip rows another transaction holds, so no job is taken twice.
UPDATE jobs SET
    status = 'running',
    attempts = attempts + 1,
    worker_id = %(worker_id)s,
    lease_until = now() + make_interval(secs => %(lease)s),
    error = NULL,
    updated_at = now()
WHERE id IN (
    SELECT id FROM jobs
    WHERE status = 'pending' AND run_after <= now() AND job_type = ANY(%(job_types)s)
    ORDER BY priority DESC, queued_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- next_run_after --
-- When the next pending job becomes due, so an idle worker can sleep until then.
SELECT min(run_after) AS run_after FROM jobs
WHERE status = 'pending' AND job_type = ANY(%(job_types)s);

-- renew_lease --
-- Extend a held job's lease. Returns nothing when the claim was lost (the
-- rescuer took it back); returns the status so the worker sees `cancelling`.
UPDATE jobs SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s
  AND status IN ('running', 'completing', 'uploading', 'cancelling')
RETURNING status;

-- advance_job --
-- Move a held job to the next running stage (completing, uploading).
UPDATE jobs SET status = %(status)s, updated_at = now()
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s
  AND status IN ('running', 'completing', 'uploading')
RETURNING *;

-- finish_job --
-- Record the end of an attempt held by this worker: completed, failed, or
-- back to pending after `retry_in` seconds, in its place in the queue. A
-- cancel request wins over a retry. A failed attempt (`failed`) adds to
-- the job's run of failures; completing ends it.
UPDATE jobs SET
    status = CASE
        WHEN status = 'cancelling' AND %(status)s <> 'completed' THEN 'cancelled'
        ELSE %(status)s END,
    output = coalesce(%(output)s, output),
    error = %(error)s,
    failing_since = CASE
        WHEN %(status)s = 'completed' THEN NULL
        WHEN %(failed)s THEN coalesce(failing_since, now())
        ELSE failing_since END,
    failures = CASE
        WHEN %(status)s = 'completed' THEN 0
        WHEN %(failed)s THEN failures + 1
        ELSE failures END,
    run_after = now() + make_interval(secs => %(retry_in)s),
    lease_until = NULL,
    worker_id = NULL,
    updated_at = now()
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s
  AND status IN ('running', 'completing', 'uploading', 'cancelling')
RETURNING *;

-- cancel_job --
-- A pending job is cancelled at once; a held one is asked to stop.
UPDATE jobs SET
    status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE 'cancelling' END,
    updated_at = now()
WHERE id = %(id)s AND status IN ('pending', 'running', 'completing', 'uploading')
RETURNING *;

-- retry_job --
-- Take a finished job back to pending with a new input, fresh attempts and
-- a fresh retry budget. It is queued anew, as a new job would be: behind
-- the jobs of its priority already waiting.
UPDATE jobs SET
    status = 'pending',
    input = %(input)s,
    output = NULL,
    error = NULL,
    attempts = 0,
    failing_since = NULL,
    failures = 0,
    queued_at = now(),
    run_after = now(),
    updated_at = now()
WHERE id = %(id)s AND job_type = %(job_type)s AND status IN ('completed', 'failed', 'cancelled')
RETURNING *;

-- rescue_jobs --
-- Take back jobs whose worker stopped renewing its lease. A lost lease is a
-- failed attempt: the job goes back to pending at once, in its place in the
-- queue, unless it is out of attempts (max_attempts) or has been failing
-- for `retry_for` seconds or more (NULL: no limit), when it fails, saying
-- so as the worker would (server/retry.py duration()). A job asked to stop
-- is cancelled.
WITH lost AS (
    SELECT id, worker_id,
           status = 'cancelling' AS cancel,
           attempts >= max_attempts AS out_of_attempts,
           coalesce(now() - failing_since >= make_interval(secs => %(retry_for)s::float8), false) AS out_of_time,
           greatest(floor(extract(epoch FROM now() - coalesce(failing_since, now()))), 0)::bigint AS secs,
           failures + 1 AS failures,
           max_attempts
    FROM jobs
    WHERE status IN ('running', 'completing', 'uploading', 'cancelling') AND lease_until < now()
    FOR UPDATE SKIP LOCKED
), verdict AS (
    SELECT *,
           NOT cancel AND (out_of_attempts OR out_of_time) AS give_up,
           CASE WHEN secs < 60 THEN secs || ' s'
                WHEN secs < 3600 THEN secs / 60 || ' min ' || mod(secs, 60) || ' s'
                ELSE secs / 3600 || ' h ' || mod(secs, 3600) / 60 || ' min' END AS waited
    FROM lost
)
UPDATE jobs SET
    status = CASE WHEN v.cancel THEN 'cancelled' WHEN v.give_up THEN 'failed' ELSE 'pending' END,
    error = jsonb_build_object(
        'code', 'lease_expired',
        'message', 'worker ' || coalesce(v.worker_id, '?') || ' stopped renewing its lease' || CASE
            WHEN NOT v.give_up THEN ''
            WHEN v.out_of_time THEN ' (retried for ' || v.waited || ' over ' || v.failures || ' attempts)'
            WHEN v.failures > 1 THEN ' (retried for ' || v.waited || ' over ' || v.failures
                || ' attempts; max_attempts ' || v.max_attempts || ' reached)'
            ELSE ' (max_attempts ' || v.max_attempts || ' reached)' END),
    failing_since = coalesce(jobs.failing_since, now()),
    failures = v.failures,
    run_after = now(),
    lease_until = NULL,
    worker_id = NULL,
    updated_at = now()
FROM verdict v
WHERE jobs.id = v.id
RETURNING jobs.*;

-- end_failing_streak --
-- The attempt held by this worker made progress (it kept a caption): the
-- job's failures so far are behind it, and its retry budget starts afresh.
UPDATE jobs SET failing_since = NULL, failures = 0
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s
  AND status IN ('running', 'completing', 'uploading', 'cancelling')
  AND (failing_since IS NOT NULL OR failures > 0)
RETURNING id;

-- save_caption --
-- Keep one image's caption for a job; an image changed since is captioned
-- again and replaces the old one.
INSERT INTO job_captions (job_id, recipe, image_id, image_updated_at, name, taken_at, caption)
VALUES (%(job_id)s, %(recipe)s, %(image_id)s, %(image_updated_at)s, %(name)s, %(taken_at)s, %(caption)s)
ON CONFLICT (job_id, recipe, image_id) DO UPDATE SET
    image_updated_at = EXCLUDED.image_updated_at,
    name = EXCLUDED.name,
    taken_at = EXCLUDED.taken_at,
    caption = EXCLUDED.caption,
    created_at = now();

-- job_captions --
-- The captions a job has made with one recipe.
SELECT image_id, image_updated_at, name, taken_at, caption FROM job_captions
WHERE job_id = %(job_id)s AND recipe = %(recipe)s;

-- count_jobs_by_status --
SELECT status, count(*) AS n FROM jobs GROUP BY status;

-- ping --
-- Is the database there?
SELECT 1 AS ok;

-- queue_stats --
-- How many pending jobs are due, and how long the oldest has waited.
SELECT count(*) FILTER (WHERE run_after <= now()) AS depth,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
FROM jobs WHERE status = 'pending';
