-- Captions of a job's images, kept as they are made, so that a retried,
-- rescued or re-run job resumes from them and never captions an image twice.
-- A caption belongs to the image as it was (`image_updated_at`) and to what
-- made it (`recipe`: the model, the prompt and their settings, hashed).

CREATE TABLE job_captions (
    job_id           uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    recipe           text NOT NULL,
    image_id         text NOT NULL,
    image_updated_at timestamptz NOT NULL,
    name             text NOT NULL,
    taken_at         timestamptz NOT NULL,
    caption          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, recipe, image_id)
);
