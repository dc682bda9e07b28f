"""JobService over a real gRPC channel: what clients may and may not do."""

import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fixtures import DOMAIN_ID, INPUT, create_request, expect_error, struct
from vlmnode.v1 import jobs_pb2


async def test_create_get_list(jobs):
    job = (await jobs.CreateJob(create_request())).job
    assert job.status == jobs_pb2.JOB_STATUS_PENDING and job.job_type == "task_timing_v1"
    assert dict(job.input) == INPUT and list(job.query["ids"]) == []
    assert job.created_at.seconds > 0 and job.max_attempts == 100
    got = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id))).job
    assert got == job
    listed = (await jobs.ListJobs(jobs_pb2.ListJobsRequest())).jobs
    assert [j.id for j in listed] == [job.id]


async def test_bad_creates_are_refused_and_store_nothing(jobs, posemesh):
    bad = [
        (create_request(job_type="task_timing_v9"), grpc.StatusCode.INVALID_ARGUMENT, "unknown job_type"),
        (create_request(job_type=""), grpc.StatusCode.INVALID_ARGUMENT, "unknown job_type"),
        (create_request(domain_id=""), grpc.StatusCode.INVALID_ARGUMENT, "domain_id must be a UUID"),
        (create_request(domain_id="../etc"), grpc.StatusCode.INVALID_ARGUMENT, "domain_id must be a UUID"),
        (create_request(query=struct({})), grpc.StatusCode.INVALID_ARGUMENT, "query.ids is required"),
        (create_request(query=struct({"ids": "abc"})), grpc.StatusCode.INVALID_ARGUMENT, "query.ids must be a list"),
        (create_request(query=struct({"ids": [1]})), grpc.StatusCode.INVALID_ARGUMENT, "query.ids[0] must be a string"),
        (create_request(query=struct({"ids": ["x"]})), grpc.StatusCode.INVALID_ARGUMENT, "not a UUID"),
        (create_request(query=struct({"ids": [], "name": "a;b"})), grpc.StatusCode.INVALID_ARGUMENT, "forbidden"),
        (create_request(query=struct({"ids": [], "sql": "1"})), grpc.StatusCode.INVALID_ARGUMENT, "unknown keys"),
        (create_request(input=struct({"vlm_prompt": "x"})), grpc.StatusCode.INVALID_ARGUMENT, "input.prompt is required"),
        (create_request(input=struct({**INPUT, "prompt": 3})), grpc.StatusCode.INVALID_ARGUMENT, "must be a string"),
        (create_request(input=struct({**INPUT, "promt": "x"})), grpc.StatusCode.INVALID_ARGUMENT, "unknown input field"),
        (create_request(input=struct({**INPUT, "prompt": "x" * 9000})), grpc.StatusCode.INVALID_ARGUMENT, "longer than"),
        (create_request(input=struct({**INPUT, "webhook_url": "ftp://x"})), grpc.StatusCode.INVALID_ARGUMENT, "webhook_url"),
        (create_request(input=struct({**INPUT, "job_type": "vlm_onyl"})), grpc.StatusCode.INVALID_ARGUMENT,
         "unknown input.job_type 'vlm_onyl'; expected one of task_timing_v1, vlm_only"),
        (create_request(job_type="vlm_only", input=struct({"job_type": "task_timing_v1", "vlm_prompt": "x"})),
         grpc.StatusCode.INVALID_ARGUMENT, "input.prompt is required"),  # the pipeline that runs decides
        (create_request(input=struct({**INPUT, "upload_results": "yes"})), grpc.StatusCode.INVALID_ARGUMENT,
         "input.upload_results must be true or false, got 'yes'"),
        (create_request(max_attempts=-1), grpc.StatusCode.INVALID_ARGUMENT, "max_attempts"),
        (create_request(idempotency_key="k" * 201), grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
        (create_request(domain_id=str(uuid.uuid4())), grpc.StatusCode.FAILED_PRECONDITION, "domain"),
        (
            create_request(query=struct({"ids": [str(uuid.uuid4())]})),
            grpc.StatusCode.FAILED_PRECONDITION,
            "No data found",
        ),
    ]
    for request, code, match in bad:
        await expect_error(jobs.CreateJob(request), code, match)
    assert (await jobs.ListJobs(jobs_pb2.ListJobsRequest())).jobs == []


async def test_posemesh_down_is_unavailable(jobs, posemesh):
    posemesh.fail_next(5, status=503)
    await expect_error(jobs.CreateJob(create_request()), grpc.StatusCode.UNAVAILABLE, "domain")


async def test_query_by_ids_and_idempotency(jobs, posemesh):
    ids = [item["id"] for item in posemesh.items(DOMAIN_ID)][:2]
    request = create_request(query=struct({"ids": ids}), idempotency_key="order-17")
    first = (await jobs.CreateJob(request)).job
    again = (await jobs.CreateJob(request)).job
    assert first.id == again.id and sorted(first.query["ids"]) == sorted(ids)
    assert len((await jobs.ListJobs(jobs_pb2.ListJobsRequest())).jobs) == 1


async def test_list_filters_and_bad_pages(jobs):
    a = (await jobs.CreateJob(create_request())).job
    b = (await jobs.CreateJob(create_request(job_type="vlm_only", input=struct({"vlm_prompt": "hi"})))).job
    await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=a.id))
    by_status = (await jobs.ListJobs(jobs_pb2.ListJobsRequest(status=jobs_pb2.JOB_STATUS_CANCELLED))).jobs
    assert [j.id for j in by_status] == [a.id]
    by_type = (await jobs.ListJobs(jobs_pb2.ListJobsRequest(job_type="vlm_only"))).jobs
    assert [j.id for j in by_type] == [b.id]
    page = (await jobs.ListJobs(jobs_pb2.ListJobsRequest(limit=1, offset=1))).jobs
    assert [j.id for j in page] == [a.id]
    for request, match in [
        (jobs_pb2.ListJobsRequest(limit=-5), "limit"),
        (jobs_pb2.ListJobsRequest(limit=2**31 - 1), "limit"),
        (jobs_pb2.ListJobsRequest(offset=-1), "offset"),
        (jobs_pb2.ListJobsRequest(offset=2**31 - 1), "offset"),
        (jobs_pb2.ListJobsRequest(status=99), "unknown status"),
        (jobs_pb2.ListJobsRequest(job_type="x' OR 1=1 --"), "unknown job_type"),
    ]:
        await expect_error(jobs.ListJobs(request), grpc.StatusCode.INVALID_ARGUMENT, match)


async def test_unknown_and_malformed_ids(jobs):
    for job_id in (str(uuid.uuid4()), "nope", ""):
        await expect_error(jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id)), grpc.StatusCode.NOT_FOUND, "not found")
        await expect_error(jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job_id)), grpc.StatusCode.NOT_FOUND, "not found")
        retry = jobs_pb2.RetryJobRequest(id=job_id, job_type="vlm_only", input=struct({"vlm_prompt": "x"}))
        await expect_error(jobs.RetryJob(retry), grpc.StatusCode.NOT_FOUND, "not found")


async def test_retry_and_cancel_rules(jobs):
    job = (await jobs.CreateJob(create_request())).job
    retry = jobs_pb2.RetryJobRequest(id=job.id, job_type="task_timing_v1", input=struct(INPUT))
    await expect_error(jobs.RetryJob(retry), grpc.StatusCode.FAILED_PRECONDITION, "only a finished job")
    cancelled = (await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id))).job
    assert cancelled.status == jobs_pb2.JOB_STATUS_CANCELLED
    wrong_type = jobs_pb2.RetryJobRequest(id=job.id, job_type="vlm_only", input=struct({"vlm_prompt": "x"}))
    await expect_error(jobs.RetryJob(wrong_type), grpc.StatusCode.INVALID_ARGUMENT, "task_timing_v1 job")
    bad_input = jobs_pb2.RetryJobRequest(id=job.id, job_type="task_timing_v1", input=struct({"prompt": "x"}))
    await expect_error(jobs.RetryJob(bad_input), grpc.StatusCode.INVALID_ARGUMENT, "vlm_prompt")
    new_input = {**INPUT, "prompt": "When was the blue box there?"}
    again = (await jobs.RetryJob(jobs_pb2.RetryJobRequest(id=job.id, job_type="task_timing_v1", input=struct(new_input)))).job
    assert again.status == jobs_pb2.JOB_STATUS_PENDING and dict(again.input) == new_input


async def test_watch_follows_a_job_to_its_end(jobs):
    job = (await jobs.CreateJob(create_request())).job
    stream = jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id))
    first = await stream.read()
    assert first.job.status == jobs_pb2.JOB_STATUS_PENDING
    await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id))
    second = await stream.read()
    assert second.job.status == jobs_pb2.JOB_STATUS_CANCELLED
    assert await stream.read() == grpc.aio.EOF


async def test_watch_unknown_job(jobs):
    stream = jobs.WatchJob(jobs_pb2.WatchJobRequest(id=str(uuid.uuid4())))
    await expect_error(stream.read(), grpc.StatusCode.NOT_FOUND, "not found")


async def test_health_and_reflection(node):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vlmnode.v1.JobService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for answer in call:
            names = {s.name for s in answer.list_services_response.service}
            assert "vlmnode.v1.JobService" in names and "grpc.health.v1.Health" in names
            break
