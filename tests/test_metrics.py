"""Prometheus metrics, scraped over HTTP as Prometheus would, and the
worker's health port."""

import asyncio
import sys

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from devpeers.images import solid_jpeg
from devpeers.ports import free_port
from tests.fixtures import INPUT, create_request, running_bridge, settings_env, struct, wait_final, wait_for
from vlmnode.v1 import inference_pb2 as pb
from vlmnode.v1 import inference_pb2_grpc


async def scrape(url: str) -> dict[tuple, float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-content-type-options"] == "nosniff"  # never run as a script
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_jobs_ollama_and_webhooks_are_counted(node, jobs, worker, webhook):
    url = f"http://127.0.0.1:{node.ops.port}/metrics"
    before = await scrape(url)
    job = (await jobs.CreateJob(create_request(input=struct({**INPUT, "webhook_url": webhook.url})))).job
    await wait_final(jobs, job.id)
    await node.gauges.read_once()
    after = await scrape(url)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("vlmnode_job_pickup_seconds_count") == 1
    assert grew("vlmnode_job_duration_seconds_count", job_type="task_timing_v1", outcome="completed") == 1
    assert grew("vlmnode_ollama_request_seconds_count", model="moondream:1.8b") == 6
    assert grew("vlmnode_ollama_request_seconds_count", model="llama3:latest") == 1
    assert grew("vlmnode_webhook_deliveries_total", outcome="delivered") == 1
    assert value(after, "vlmnode_jobs", status="completed") == 1
    assert value(after, "vlmnode_jobs", status="pending") == 0
    assert value(after, "vlmnode_queue_depth") == 0


async def test_ollama_errors_are_counted_by_model(node, jobs, worker, fake_ollama):
    url = f"http://127.0.0.1:{node.ops.port}/metrics"
    before = await scrape(url)
    fake_ollama.stop()
    await wait_final(jobs, (await jobs.CreateJob(create_request(max_attempts=1))).job.id)
    after = await scrape(url)
    key = ("vlmnode_ollama_errors_total", (("code", "peer_unavailable"), ("model", "moondream:1.8b")))
    assert after.get(key, 0) - before.get(key, 0) >= 1


async def test_realtime_streams_and_frames(node, fake_ollama):
    fake_ollama.latency = 0.3
    async with running_bridge(f"127.0.0.1:{node.port}") as base:
        url = base + "/metrics"  # the bridge's own endpoint; same process as the node here
        before = await scrape(url)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            call = inference_pb2_grpc.InferenceServiceStub(channel).Infer()
            await call.write(pb.InferRequest(config=pb.StreamConfig(prompt="What colour?", batch_size=1)))
            for colour in ("red", "green", "blue", "white"):
                await call.write(pb.InferRequest(frame=pb.Frame(image=solid_jpeg(colour))))
            while fake_ollama.in_flight == 0:
                await asyncio.sleep(0.01)
            during = await scrape(url)
            while not (await call.read()).chunk.done:
                pass
            call.cancel()
        after = await scrape(url)
    assert value(during, "vlmnode_realtime_streams") - value(before, "vlmnode_realtime_streams") == 1
    assert value(after, "vlmnode_frames_received_total") - value(before, "vlmnode_frames_received_total") == 4
    assert value(after, "vlmnode_frames_dropped_total") - value(before, "vlmnode_frames_dropped_total") == 2


async def test_worker_health_port(settings):
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.main", env=settings_env(settings, WORKER_HEALTH_PORT=port, HTTP_HOST="127.0.0.1")
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def up():
                try:
                    return await http.get("/health")
                except httpx.TransportError:
                    return None

            health = await wait_for(up)
            assert health.status_code == 200 and health.json()["status"] == "ok"
            assert health.json()["jobs_running"] == 0 and health.json()["worker"]
            metrics = await http.get("/metrics")
            assert "vlmnode_job_pickup_seconds" in metrics.text
            assert health.headers["x-content-type-options"] == metrics.headers["x-content-type-options"] == "nosniff"
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0
