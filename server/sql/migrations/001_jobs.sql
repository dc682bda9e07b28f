-- The job queue: one row a job, its status history, and the notifications
-- that wake workers and watchers.

CREATE TABLE jobs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_type        text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN (
                        'pending', 'running', 'completing', 'uploading',
                        'completed', 'failed', 'cancelling', 'cancelled')),
    domain_id       text NOT NULL DEFAULT '',
    query           jsonb NOT NULL DEFAULT '{}',
    input           jsonb NOT NULL DEFAULT '{}',
    output          jsonb,
    error           jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    priority        integer NOT NULL DEFAULT 0,
    run_after       timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    worker_id       text,
    idempotency_key text UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Workers take the best pending job that is due.
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, run_after, created_at) WHERE status = 'pending';
-- The rescuer looks for held jobs whose lease ran out.
CREATE INDEX jobs_lease_idx ON jobs (lease_until)
    WHERE status IN ('running', 'completing', 'uploading', 'cancelling');
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id);
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC);

CREATE TABLE job_events (
    id      bigserial PRIMARY KEY,
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    status  text NOT NULL,
    attempt integer NOT NULL,
    error   jsonb,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

-- Every change of status is recorded and announced: on `vlmnode_job_events`
-- for watchers, and on `vlmnode_jobs_ready` when a job becomes pending so an
-- idle worker claims it at once instead of at its next poll.
CREATE FUNCTION jobs_status_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO job_events (job_id, status, attempt, error)
            VALUES (NEW.id, NEW.status, NEW.attempts, NEW.error);
        PERFORM pg_notify('vlmnode_job_events', NEW.id::text || ' ' || NEW.status);
        IF NEW.status = 'pending' THEN
            PERFORM pg_notify('vlmnode_jobs_ready', NEW.job_type);
        END IF;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER jobs_status_changed
    AFTER INSERT OR UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_status_changed();
