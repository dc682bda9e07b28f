-- All SQL of the node, as named queries: `-- name --`, a comment saying what
-- it does, then the statement. Loaded by server/store.py.

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
-- Take up to `limit` of the best due pending jobs of the given types;
-- concurrent claimers skip rows another transaction holds, so no job is
-- taken twice.
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
    ORDER BY priority DESC, run_after, created_at
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
-- back to pending after `retry_in` seconds. A cancel request wins over a
-- retry.
UPDATE jobs SET
    status = CASE
        WHEN status = 'cancelling' AND %(status)s <> 'completed' THEN 'cancelled'
        ELSE %(status)s END,
    output = coalesce(%(output)s, output),
    error = %(error)s,
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
-- Take a finished job back to pending with a new input and fresh attempts.
UPDATE jobs SET
    status = 'pending',
    input = %(input)s,
    output = NULL,
    error = NULL,
    attempts = 0,
    run_after = now(),
    updated_at = now()
WHERE id = %(id)s AND job_type = %(job_type)s AND status IN ('completed', 'failed', 'cancelled')
RETURNING *;

-- rescue_jobs --
-- Take back jobs whose worker stopped renewing its lease: to pending when
-- attempts remain, else failed; a job asked to stop is cancelled.
UPDATE jobs SET
    status = CASE
        WHEN status = 'cancelling' THEN 'cancelled'
        WHEN attempts >= max_attempts THEN 'failed'
        ELSE 'pending' END,
    error = jsonb_build_object(
        'code', 'lease_expired',
        'message', 'worker ' || coalesce(worker_id, '?') || ' stopped renewing its lease'),
    run_after = now(),
    lease_until = NULL,
    worker_id = NULL,
    updated_at = now()
WHERE id IN (
    SELECT id FROM jobs
    WHERE status IN ('running', 'completing', 'uploading', 'cancelling') AND lease_until < now()
    FOR UPDATE SKIP LOCKED
)
RETURNING id, status;

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
