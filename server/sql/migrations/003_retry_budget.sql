-- Transient failures are retried for a time budget rather than a count, and
-- a job taken back or retried keeps its place in the queue.
--
-- queued_at:     when the job entered the queue (created, or re-run with a
--                PUT retry). Due jobs are claimed in this order within a
--                priority, so a job rescued from a dead worker, or waiting
--                out a failure, goes before jobs queued after it once due.
-- failing_since: when the job's current run of failed attempts began; NULL
--                while it is not failing. A caption made, a completion or a
--                PUT retry ends the run.
-- failures:      the failed attempts in that run.

ALTER TABLE jobs
    ADD COLUMN queued_at     timestamptz,
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN failures      integer NOT NULL DEFAULT 0;
UPDATE jobs SET queued_at = created_at;
ALTER TABLE jobs
    ALTER COLUMN queued_at SET DEFAULT now(),
    ALTER COLUMN queued_at SET NOT NULL;

-- Workers take the best due pending job: by priority, then queued_at;
-- run_after rides in the index so jobs not yet due are passed over there.
DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, queued_at, run_after) WHERE status = 'pending';
