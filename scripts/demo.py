"""`make demo`: the node against the fake peers, with one job to watch.

Starts the fake Ollama, a fake posemesh holding a few demo photos and a
webhook receiver, then the node (`python -m server.node`) pointed at them;
creates a task_timing_v1 job over gRPC, follows it to the end and prints the
result and the webhook delivery. The node keeps running until Ctrl-C (or
exits at once with --once).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import grpc
from google.protobuf import json_format
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

from devpeers.fake_ollama import FakeOllama
from devpeers.fake_posemesh import DEMO_DOMAIN_ID, FakePosemesh, demo_images
from devpeers.webhook_receiver import WebhookReceiver


def run_job(target: str, webhook_url: str) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.CreateJobRequest(job_type="task_timing_v1", domain_id=DEMO_DOMAIN_ID)
        request.query.update({"ids": []})
        request.input.update(
            {
                "prompt": "When was the shelf being restocked with the green box?",
                "vlm_prompt": "Describe what you see in this image",
                "webhook_url": webhook_url,
            }
        )
        for attempt in range(50):  # the server may still be applying migrations
            try:
                job = jobs.CreateJob(request, timeout=10).job
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 49:
                    raise
                time.sleep(0.2)
        print(f"\ncreated job {job.id} over gRPC")
        for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id)):
            print(f"  status: {jobs_pb2.JobStatus.Name(event.job.status).removeprefix('JOB_STATUS_').lower()}")
            final = event.job
        if final.status != jobs_pb2.JOB_STATUS_COMPLETED:
            raise SystemExit(f"job ended {final.status}: {final.error.code}: {final.error.message}")
        output = json_format.MessageToDict(final.output)
        print("\ntimeline (the original's `logs`):")
        print("  " + output["logs"].replace("\n", "\n  "))
        task = output["task"]
        print(f"\nstart: {task['start']['image_id']} at {task['start']['timestamp']}")
        print(f"end:   {task['end']['image_id']} at {task['end']['timestamp']}")
        print(f"why:   {task['reasoning']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the demo job")
    args = parser.parse_args()

    with FakeOllama(latency=0.2) as ollama, FakePosemesh() as posemesh, WebhookReceiver() as webhook:
        posemesh.add_domain(DEMO_DOMAIN_ID)
        for name, data_type, data in demo_images():
            posemesh.add_item(DEMO_DOMAIN_ID, name, data, data_type=data_type)
        env = {
            **os.environ,
            "OLLAMA_HOST": ollama.url,
            "API_URL": posemesh.api_url,
            "DDS_URL": posemesh.dds_url,
            "POSEMESH_EMAIL": posemesh.email,
            "POSEMESH_PASSWORD": posemesh.password,
            # The demo's webhook receiver is on this machine, where webhooks are refused by default.
            "WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        }
        print(f"fake Ollama on {ollama.url}, fake posemesh on {posemesh.base_url}, webhook receiver on {webhook.url}")
        node = subprocess.Popen([sys.executable, "-m", "server.node"], env=env)
        try:
            run_job(f"127.0.0.1:{env.get('GRPC_PORT', '50051')}", webhook.url)
            [delivery] = webhook.wait_for(1, timeout=30)
            print(f"\nwebhook delivered: {json.dumps(delivery.json)[:160]}...")
            if not args.once:
                print("\nthe node is running with the fake peers; Ctrl-C stops it")
                node.wait()
        except KeyboardInterrupt:
            pass
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(60)


if __name__ == "__main__":
    main()
