"""Jobs end to end: created over gRPC, run by a worker against the fake
Ollama and posemesh, delivered to a webhook."""

import asyncio
import dataclasses
import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime

from devpeers.images import solid_jpeg
from tests.fixtures import (
    COLOURS,
    DOMAIN_ID,
    INPUT,
    as_dict,
    create_request,
    running_worker,
    struct,
    vlm_requests,
    wait_final,
)
from vlmnode.v1 import jobs_pb2


async def test_task_timing_finds_start_and_end(jobs, worker, webhook, posemesh, fake_ollama):
    request = create_request(input=struct({**INPUT, "webhook_url": webhook.url}))
    job = (await jobs.CreateJob(request)).job
    done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    output = as_dict(done.output)
    # The six photos, in capture order, each captioned from its own pixels.
    timeline = output["timeline"]
    assert [row["caption"] for row in timeline] == [f"a 64x48 image, mostly {c}" for c in COLOURS]
    assert [row["timestamp"] for row in timeline][:2] == ["2025-08-10T16:40:00Z", "2025-08-10T16:41:00Z"]
    # `logs` as the original wrote it: quoted rows, the time as the file name has it.
    assert output["logs"] == "id,timestamp,event\n" + "".join(
        f'"{row["image_id"]}","{row["name"][-15:]}","{row["caption"]}"\n' for row in timeline
    )
    # "red" is in the prompt: the fake LLM marks the first and last red photos.
    task = output["task"]
    assert task["start"]["image_id"] == timeline[1]["image_id"]
    assert task["end"]["image_id"] == timeline[4]["image_id"]
    assert task["start"]["timestamp"] == "2025-08-10T16:41:00Z"
    # `temporal_output`: the LLM's reply to the prompt, in words, as the original gave it.
    assert isinstance(output["temporal_output"], str) and "red" in output["temporal_output"]
    # The LLM was asked with the JSON schema, the VLM once per image.
    llm_calls = [r for r in fake_ollama.requests if r.get("format")]
    assert len(llm_calls) == 1 and llm_calls[0]["model"] == "llama3:latest"
    assert sum(1 for r in fake_ollama.requests if r.get("images")) == 6
    # Delivered once, signed.
    [delivery] = await asyncio.to_thread(webhook.wait_for, 1)  # the worker runs in this loop: do not block it
    assert delivery.json["job_id"] == job.id and delivery.json["error"] is None
    assert delivery.json["data"]["task"] == task
    assert delivery.headers["idempotency-key"] == job.id
    ts = delivery.headers["x-vlm-timestamp"]
    expected = hmac.new(b"s3cret", f"{ts}.".encode() + delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["x-vlm-signature"] == f"sha256={expected}"
    statuses = [s for s in (await worker.store.job_events(done_id(done)))]
    assert [e.status for e in statuses] == ["pending", "running", "completing", "uploading", "completed"]


def done_id(job):
    import uuid

    return uuid.UUID(job.id)


async def test_vlm_only_returns_responses(jobs, worker, posemesh):
    ids = [item["id"] for item in posemesh.items(DOMAIN_ID)][:3]
    request = create_request(
        job_type="vlm_only", query=struct({"ids": ids}), input=struct({"vlm_prompt": "What colour?"})
    )
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    responses = as_dict(done.output)["responses"]
    assert sorted(r["image_id"] for r in responses) == sorted(ids)
    assert all(r["response"].startswith("a 64x48 image, mostly") for r in responses)


async def test_vlm_only_chosen_by_input_job_type_as_the_original_worker_chose(jobs, worker, posemesh, fake_ollama):
    # The original UI and scripts sent a task_timing_v1 job whose input says vlm_only.
    request = create_request(input=struct({"job_type": "vlm_only", "vlm_prompt": "What colour?"}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert done.job_type == "task_timing_v1"  # stored as sent
    output = as_dict(done.output)
    assert set(output) == {"responses", "skipped"} and len(output["responses"]) == 6
    assert not [r for r in fake_ollama.requests if r.get("format")], "no LLM step"


async def test_times_in_the_original_form_when_they_came_from_the_file_name(jobs, worker, posemesh):
    taken, domain = datetime(2024, 5, 6, 7, 8, 9), str(uuid.uuid4())
    named = posemesh.add_item(domain, "photo_req_9_20250810_164000", solid_jpeg("red"))
    exif = posemesh.add_item(domain, "photo_no_stamp", solid_jpeg("blue", exif_datetime=taken))
    request = create_request(job_type="vlm_only", domain_id=domain, input=struct({"vlm_prompt": "What colour?"}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    by_id = {r["image_id"]: r for r in as_dict(done.output)["responses"]}
    # `timestamp` as the original read it from the name; `taken_at` always ISO 8601.
    assert (by_id[named]["timestamp"], by_id[named]["taken_at"]) == ("20250810_164000", "2025-08-10T16:40:00Z")
    assert by_id[exif]["timestamp"] == by_id[exif]["taken_at"] == "2024-05-06T07:08:09Z"


async def test_unreadable_images_are_skipped(jobs, worker, posemesh):
    bad_id = posemesh.add_item(DOMAIN_ID, "photo_broken_20250810_170000", b"not a jpeg at all")
    done = await wait_final(jobs, (await jobs.CreateJob(create_request())).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    skipped = as_dict(done.output)["skipped"]
    assert [s["image_id"] for s in skipped] == [bad_id] and "not an image" in skipped[0]["reason"]


async def test_only_unreadable_images_fail_the_job_at_once(jobs, worker, posemesh):
    bad_id = posemesh.add_item(DOMAIN_ID, "photo_broken_20250810_170000", b"\xff\xd8\xff garbage")
    request = create_request(query=struct({"ids": [bad_id]}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.error.code == "no_images" and done.attempts == 1


async def test_ollama_down_retries_then_fails(jobs, worker, fake_ollama, webhook):
    fake_ollama.stop()
    request = create_request(max_attempts=3, input=struct({**INPUT, "webhook_url": webhook.url}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.attempts == 3
    assert done.error.code == "peer_unavailable" and "Ollama" in done.error.message
    [delivery] = await asyncio.to_thread(webhook.wait_for, 1)  # the worker runs in this loop: do not block it
    assert delivery.json["data"] is None
    # The original's "processing failed" (100), with the node's reason beside it.
    assert delivery.json["error"] == {"code": 100, "reason": "peer_unavailable", "message": done.error.message}


async def test_transient_ollama_errors_are_retried(jobs, worker, fake_ollama):
    fake_ollama.mode = "error"
    job = (await jobs.CreateJob(create_request())).job
    await asyncio.sleep(0.3)
    fake_ollama.mode = "ok"
    done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED
    assert done.attempts >= 2


async def test_webhook_refusing_fails_the_job_but_keeps_the_output(jobs, worker, webhook):
    webhook.mode = "down"
    request = create_request(input=struct({**INPUT, "webhook_url": webhook.url}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id, timeout=30)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.error.code == "webhook_failed"
    assert "task" in as_dict(done.output)


async def test_cancel_a_running_job(jobs, worker, fake_ollama):
    fake_ollama.latency = 1.0
    job = (await jobs.CreateJob(create_request())).job
    stream = jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id))
    async for event in stream:
        if event.job.status == jobs_pb2.JOB_STATUS_RUNNING:
            break
    cancelled = (await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id))).job
    assert cancelled.status == jobs_pb2.JOB_STATUS_CANCELLING
    done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_CANCELLED


async def test_retry_runs_a_finished_job_again(jobs, worker):
    job = (await jobs.CreateJob(create_request())).job
    await wait_final(jobs, job.id)
    new_input = {**INPUT, "prompt": "When was the blue box there?"}
    await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=job.id, job_type="task_timing_v1", input=struct(new_input)))
    done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED
    task = as_dict(done.output)["task"]
    assert task["start"]["image_id"] == task["end"]["image_id"]  # the single blue photo


async def test_only_the_images_of_a_domain_are_downloaded(jobs, worker, posemesh):
    done = await wait_final(jobs, (await jobs.CreateJob(create_request())).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    photos = {i["id"] for i in posemesh.items(DOMAIN_ID) if i["data_type"] == "jpg"}
    # The sensor log, the manifest and the 200 MiB scan beside the photos: listed, never downloaded.
    assert set(posemesh.bytes_served) == photos and len(posemesh.bytes_served) == 6
    assert posemesh.bytes_sent < 1024 * 1024
    assert "skipped" in as_dict(done.output) and not as_dict(done.output)["skipped"]


async def test_an_image_too_large_to_take_is_skipped_unread(jobs, worker, posemesh):
    from devpeers.fake_posemesh import Generated

    huge = posemesh.add_item(DOMAIN_ID, "photo_huge_20250810_170000", Generated(64 * 1024 * 1024, b"\xff\xd8"))
    done = await wait_final(jobs, (await jobs.CreateJob(create_request())).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    [skipped] = as_dict(done.output)["skipped"]
    assert skipped["image_id"] == huge and skipped["reason"].startswith("larger than")
    assert huge not in posemesh.bytes_served


async def test_a_bad_answer_is_asked_again_and_a_retry_keeps_the_captions(jobs, worker, fake_ollama):
    fake_ollama.mode = "reversed"  # every answer ends before it starts
    done = await wait_final(jobs, (await jobs.CreateJob(create_request(max_attempts=2))).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.error.code == "bad_model_answer" and done.attempts == 2
    # Each attempt asked the LLM three times; the six captions were made once for both.
    assert len([r for r in fake_ollama.requests if r["format"]]) == 6
    assert len(vlm_requests(fake_ollama)) == 6

    fake_ollama.mode = "ok"
    await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=done.id, job_type="task_timing_v1", input=struct(INPUT)))
    again = await wait_final(jobs, done.id)
    assert again.status == jobs_pb2.JOB_STATUS_COMPLETED, again.error
    assert len(vlm_requests(fake_ollama)) == 6  # a re-run with the same VLM prompt captions nothing again
    assert len(as_dict(again.output)["timeline"]) == 6


async def test_a_retry_with_a_new_vlm_prompt_captions_again(jobs, worker, fake_ollama):
    job = (await jobs.CreateJob(create_request())).job
    await wait_final(jobs, job.id)
    new_input = {**INPUT, "vlm_prompt": "What is on the shelf?"}
    await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=job.id, job_type="task_timing_v1", input=struct(new_input)))
    done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert [r["prompt"] for r in vlm_requests(fake_ollama)] == ["Describe the image"] * 6 + ["What is on the shelf?"] * 6


async def test_a_missing_vlm_is_pulled_for_the_job_as_the_original_did(settings, jobs, posemesh):
    from devpeers.fake_ollama import FakeOllama
    from tests.fixtures import running_worker

    with FakeOllama(["llama3:latest"]) as ollama:  # the VLM is not there yet
        job = (await jobs.CreateJob(create_request())).job
        async with running_worker(dataclasses.replace(settings, ollama_host=ollama.url)):
            done = await wait_final(jobs, job.id)
        assert "moondream:1.8b" in ollama.models
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert done.attempts == 1


async def test_a_model_the_registry_does_not_have_fails_the_job_clearly(settings, jobs, posemesh):
    from devpeers.fake_ollama import FakeOllama
    from tests.fixtures import running_worker

    with FakeOllama(["llama3:latest"], pullable=set()) as ollama:
        job = (await jobs.CreateJob(create_request())).job
        async with running_worker(dataclasses.replace(settings, ollama_host=ollama.url)):
            done = await wait_final(jobs, job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED and done.attempts == 1
    assert done.error.code == "model_missing" and "file does not exist" in done.error.message


async def test_a_long_job_overflowing_the_llm_context_still_finds_its_task(settings, jobs, posemesh, fake_ollama):
    """300 photos, a red stretch in the middle, an LLM context of 4096 tokens."""
    from devpeers.images import solid_jpeg
    from tests.fixtures import running_worker

    domain = posemesh.add_domain("5d1e9a52-3c1c-4b7e-9a51-7f4c2b1e0a11")
    ids = []
    for n in range(300):
        colour = "red" if 140 <= n <= 171 else "grey"
        ids.append(posemesh.add_item(domain, f"photo_{n:03d}_20250810_{10 + n // 60:02d}{n % 60:02d}00",
                                     solid_jpeg(colour, size=(32, 24))))
    request = create_request(domain_id=domain)
    async with running_worker(dataclasses.replace(settings, llm_num_ctx=4096)):
        done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id, timeout=60)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    output = as_dict(done.output)
    assert output["task"]["start"]["image_id"] == ids[140] and output["task"]["end"]["image_id"] == ids[171]
    assert output["decision"]["windows"] > 1
    llm = [r for r in fake_ollama.requests if r["format"]]
    assert all(not r["truncated"] for r in llm) and {r["num_ctx"] for r in llm} == {4096}


# A bad day: transient failures waited out for a time, and jobs that keep their place.

VLM_ONLY = {"job_type": "vlm_only", "input": struct({"vlm_prompt": "What colour?"})}
GIVE_UP = re.compile(r"(?P<error>.+) \(retried for (?P<waited>\d+ s|\d+ min \d+ s) over (?P<attempts>\d+) attempts"
                     r"(?P<capped>; max_attempts \d+ reached)?\)")


def quick_retries(settings, **kw):
    """Retries as the defaults make them, on a test's time scale."""
    return dataclasses.replace(settings, **{"job_retry_wait": 0.05, "job_retry_max_wait": 0.1, **kw})


async def more_attempts_than(jobs, job_id: str, n: int) -> bool:
    return (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id))).job.attempts > n


async def test_an_ollama_outage_longer_than_the_old_retry_budget_is_waited_out(settings, jobs, fake_ollama):
    """The old budget, 5 attempts, was spent in about 30 s: a 35 s restart of
    Ollama failed every queued job for good. Now a job waits out JOB_RETRY_FOR,
    and the node's default max_attempts does not end it sooner."""
    from tests.fixtures import running_worker, wait_for

    async with running_worker(quick_retries(settings, job_retry_for=60)) as worker:
        fake_ollama.stop()
        job = (await jobs.CreateJob(create_request(**VLM_ONLY))).job
        await wait_for(lambda: more_attempts_than(jobs, job.id, 8), timeout=30)
        fake_ollama.start()
        done = await wait_final(jobs, job.id, timeout=30)
        row = await worker.store.get_job(job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert done.attempts > 8 and done.max_attempts == 100
    assert len(as_dict(done.output)["responses"]) == 6
    assert row.failing_since is None and row.failures == 0  # the success ended the run of failures


async def test_a_spent_retry_budget_fails_the_job_saying_what_it_waited_for(settings, jobs, fake_ollama):
    from tests.fixtures import running_worker

    fake_ollama.stop()
    async with running_worker(quick_retries(settings, job_retry_for=1.5)):
        done = await wait_final(jobs, (await jobs.CreateJob(create_request(**VLM_ONLY))).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.error.code == "peer_unavailable"
    said = GIVE_UP.fullmatch(done.error.message)
    assert said and said["error"].startswith("Ollama is not reachable at ") and not said["capped"], done.error.message
    assert int(said["attempts"]) == done.attempts > 5  # every attempt failed, for 1.5 s and a little more
    assert re.fullmatch(r"[1-9]\d* s", said["waited"])  # at least the budget, 1.5 s, in whole seconds


async def test_max_attempts_still_caps_a_job_a_caller_limited(jobs, worker, fake_ollama):
    fake_ollama.stop()
    done = await wait_final(jobs, (await jobs.CreateJob(create_request(max_attempts=2, **VLM_ONLY))).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED and done.attempts == 2
    said = GIVE_UP.fullmatch(done.error.message)
    assert said and said["attempts"] == "2" and said["capped"] == "; max_attempts 2 reached", done.error.message


async def test_a_job_making_progress_between_failures_is_not_failed_by_the_budget(settings, jobs):
    """Ollama flapping under a long job: each attempt keeps a caption and then
    fails. The failures span more than the budget, but no run of them does."""
    from server.errors import PeerUnavailable
    from server.store import Caption

    now = datetime.now(UTC)

    def flapping(progress: bool):
        async def pipeline(ctx, peers, data):
            if ctx.claim.attempt <= 6:
                if progress:
                    made = Caption(f"image-{ctx.claim.attempt}", now, "n", now, "a caption")
                    await ctx.save_caption("recipe", made)
                await asyncio.sleep(0.1)
                raise PeerUnavailable("Ollama is not reachable at http://ollama:11434: connection reset")
            return {"responses": []}

        return pipeline

    quick = quick_retries(settings, job_retry_for=0.3)
    async with running_worker(quick, {"vlm_only": flapping(progress=True)}):
        made_progress = await wait_final(jobs, (await jobs.CreateJob(create_request(**VLM_ONLY))).job.id)
    async with running_worker(quick, {"vlm_only": flapping(progress=False)}):
        stuck = await wait_final(jobs, (await jobs.CreateJob(create_request(**VLM_ONLY))).job.id)
    assert made_progress.status == jobs_pb2.JOB_STATUS_COMPLETED and made_progress.attempts == 7
    assert stuck.status == jobs_pb2.JOB_STATUS_FAILED and stuck.attempts < 7
    assert GIVE_UP.fullmatch(stuck.error.message), stuck.error.message


async def test_a_job_taken_back_from_a_dead_worker_goes_before_newer_jobs(settings, jobs, posemesh):
    """A worker dies holding the oldest job; by the time its lease runs out
    newer jobs are waiting. The job taken back runs first."""
    from server.store import JobStore
    from tests.fixtures import running_worker

    store = JobStore(settings.postgres_url, max_size=2)
    await store.open()
    try:
        oldest = (await jobs.CreateJob(create_request(**VLM_ONLY))).job
        await store.claim_job("dead-worker", ["vlm_only"], lease=0.05)
        newer = [(await jobs.CreateJob(create_request(**VLM_ONLY))).job for _ in range(3)]
        await asyncio.sleep(0.1)
        assert [r.status for r in await store.rescue_jobs(settings.job_retry_for)] == ["pending"]
        async with running_worker(settings):  # one job at a time (WORKER_JOBS=1)
            for job in [oldest, *newer]:
                assert (await wait_final(jobs, job.id)).status == jobs_pb2.JOB_STATUS_COMPLETED
        runs = []
        for job in [oldest, *newer]:
            runs += [(e.at, job.id) for e in await store.job_events(uuid.UUID(job.id)) if e.status == "running"]
    finally:
        await store.close()
    runs.sort()
    assert runs[0][1] == oldest.id  # the dead worker's attempt
    assert [job_id for _, job_id in runs[1:]] == [oldest.id] + [j.id for j in newer]
