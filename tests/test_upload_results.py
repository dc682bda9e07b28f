"""input.upload_results: a job's result stored in its posemesh domain, end to
end (gRPC, a worker, the fake Ollama and posemesh, a webhook)."""

import asyncio
import json
import uuid

from devpeers.fake_posemesh import INVALID_DOMAIN_TOKEN
from tests.fixtures import DOMAIN_ID, INPUT, as_dict, create_request, struct, vlm_requests, wait_final
from vlmnode.v1 import jobs_pb2
from worker.upload import RESULT_DATA_TYPE

UPLOAD = {**INPUT, "upload_results": True}


def results(posemesh) -> list[dict]:
    """The result items the domain holds."""
    return [i for i in posemesh.items(DOMAIN_ID) if i["data_type"] == RESULT_DATA_TYPE]


async def statuses(worker, job) -> list[str]:
    return [e.status for e in await worker.store.job_events(uuid.UUID(job.id))]


async def test_the_result_is_stored_in_the_domain_and_its_id_given(jobs, worker, posemesh, webhook):
    request = create_request(input=struct({**UPLOAD, "webhook_url": webhook.url}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    output = as_dict(done.output)
    uploaded = output.pop("uploaded")
    # The output's other fields are as without the upload.
    assert set(output) == {"logs", "temporal_output", "task", "timeline", "skipped", "decision"}
    [item] = results(posemesh)
    assert uploaded == {
        "id": item["id"],
        "name": f"vlm_job_result_{done.id}",
        "data_type": "vlm_job_result_json",
        "size": item["size"],
    }
    assert item["name"] == f"vlm_job_result_{done.id}"
    # The item holds the output as JSON, as it was before `uploaded` was added.
    assert json.loads(posemesh.item_data(DOMAIN_ID, item["id"])) == output
    # Writing results out: the domain, then the webhook, which has the item's id too.
    assert await statuses(worker, done) == ["pending", "running", "completing", "uploading", "completed"]
    [delivery] = await asyncio.to_thread(webhook.wait_for, 1)  # the worker runs in this loop: do not block it
    assert delivery.json["data"]["uploaded"] == uploaded
    # Sent as the real client sends it, with our client id.
    [upload] = posemesh.upload_requests
    assert upload.method == "POST" and upload.headers["posemesh-client-id"] == "vlm-node"
    assert [p.disposition for p in upload.parts] == [{"name": item["name"], "data-type": "vlm_job_result_json"}]


async def test_a_job_that_does_not_ask_never_uploads(jobs, worker, posemesh):
    done = await wait_final(jobs, (await jobs.CreateJob(create_request())).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert "uploaded" not in as_dict(done.output)
    assert posemesh.upload_requests == [] and results(posemesh) == []
    assert await statuses(worker, done) == ["pending", "running", "completing", "completed"]  # no webhook either


async def test_vlm_only_results_are_stored_too(jobs, worker, posemesh):
    request = create_request(job_type="vlm_only", input=struct({"vlm_prompt": "What colour?", "upload_results": True}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    output = as_dict(done.output)
    [item] = results(posemesh)
    assert output.pop("uploaded")["id"] == item["id"]
    assert json.loads(posemesh.item_data(DOMAIN_ID, item["id"])) == output
    assert await statuses(worker, done) == ["pending", "running", "uploading", "completed"]


async def test_a_transient_upload_failure_is_retried_without_a_second_item(jobs, worker, posemesh, fake_ollama):
    # The item is stored, but the answer is lost on its way back (a gateway's 504): the retry
    # finds the item by its name and updates it rather than creating another.
    posemesh.fail_uploads(1, 504, stored=True)
    done = await wait_final(jobs, (await jobs.CreateJob(create_request(input=struct(UPLOAD)))).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert done.attempts == 2
    [item] = results(posemesh)
    assert as_dict(done.output)["uploaded"]["id"] == item["id"]
    assert [u.method for u in posemesh.upload_requests] == ["POST", "PUT"]
    assert posemesh.upload_requests[1].parts[0].disposition == {"id": item["id"]}
    # The first attempt's error said why it was retried.
    events = await worker.store.job_events(uuid.UUID(done.id))
    [retried] = [e for e in events if e.status == "pending" and e.error]
    assert retried.error["code"] == "upload_failed" and "answered 504" in retried.error["message"]
    # The captions were kept: the retry made none again.
    assert len(vlm_requests(fake_ollama)) == 6


async def test_a_domain_server_down_at_upload_is_retried(jobs, worker, posemesh):
    posemesh.fail_uploads(2, 503)  # refused before storing, twice
    done = await wait_final(jobs, (await jobs.CreateJob(create_request(input=struct(UPLOAD)))).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert done.attempts == 3 and len(results(posemesh)) == 1
    assert [u.method for u in posemesh.upload_requests] == ["POST", "POST", "POST"]


async def test_a_token_expired_at_upload_is_renewed(jobs, worker, posemesh):
    posemesh.refuse_domain_tokens(1, writes_only=True)  # 403 "invalid domain access token", once
    done = await wait_final(jobs, (await jobs.CreateJob(create_request(input=struct(UPLOAD)))).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    assert done.attempts == 1 and len(results(posemesh)) == 1


async def test_an_account_that_may_not_write_fails_the_job_and_keeps_the_output(jobs, worker, posemesh, webhook):
    posemesh.read_only = True  # every domain token it gets may read, not write
    request = create_request(input=struct({**UPLOAD, "webhook_url": webhook.url}))
    done = await wait_final(jobs, (await jobs.CreateJob(request)).job.id)
    assert done.status == jobs_pb2.JOB_STATUS_FAILED
    assert done.attempts == 1  # permanent: not retried
    assert done.error.code == "upload_failed"
    assert done.error.message.startswith(f"could not store the result in domain {DOMAIN_ID}: ")
    assert "(403)" in done.error.message and INVALID_DOMAIN_TOKEN in done.error.message
    assert "may read this domain but not write to it" in done.error.message
    # The work is done: the output is kept, without `uploaded`.
    output = as_dict(done.output)
    assert "task" in output and "uploaded" not in output
    assert results(posemesh) == []
    assert await statuses(worker, done) == ["pending", "running", "completing", "uploading", "failed"]
    # The webhook hears of the failure, as of any other.
    [delivery] = await asyncio.to_thread(webhook.wait_for, 1)
    assert delivery.json["data"] is None
    assert delivery.json["error"]["reason"] == "upload_failed" and delivery.json["error"]["code"] == 100


async def test_a_rerun_updates_the_jobs_item(jobs, worker, posemesh):
    job = (await jobs.CreateJob(create_request(input=struct(UPLOAD)))).job
    first = await wait_final(jobs, job.id)
    assert first.status == jobs_pb2.JOB_STATUS_COMPLETED, first.error
    new_input = {**UPLOAD, "prompt": "When was the blue box there?"}
    await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=job.id, job_type="task_timing_v1", input=struct(new_input)))
    again = await wait_final(jobs, job.id)
    assert again.status == jobs_pb2.JOB_STATUS_COMPLETED, again.error
    [item] = results(posemesh)
    output = as_dict(again.output)
    assert output.pop("uploaded")["id"] == item["id"] == as_dict(first.output)["uploaded"]["id"]
    assert json.loads(posemesh.item_data(DOMAIN_ID, item["id"])) == output  # the new result
    assert [u.method for u in posemesh.upload_requests] == ["POST", "PUT"]
