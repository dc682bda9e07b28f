"""`make demo`: the node against the fake peers, with one job to watch.

Starts the fake Ollama, a fake posemesh holding a few demo photos and a
webhook receiver, then a node of its own (`python -m server.node`: its own
private PostgreSQL in --data-dir, its own free ports, so it runs beside
`make run`) pointed at them; creates a task_timing_v1 job over gRPC, follows
it to the end and tells its story: the timeline, the task's start, end and
duration, and the webhook delivery. The node's log lines go to
--data-dir/node.log. The node keeps running until Ctrl-C (or stops at once
with --once).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import grpc
from google.protobuf import json_format

from devpeers.fake_ollama import FakeOllama
from devpeers.fake_posemesh import DEMO_DOMAIN_ID, DEMO_PHOTO_INTERVAL, FakePosemesh, demo_images
from devpeers.ports import free_port
from devpeers.webhook_receiver import WebhookReceiver
from server.config import Settings
from server.retry import duration
from vlmnode.v1 import jobs_pb2, jobs_pb2_grpc

DATA_DIR = os.path.join(Settings.data_dir, "demo")
PROMPT = "When was the shelf being restocked with the green box?"
NODE_START = 120  # seconds the node may take to answer gRPC (a real Ollama may pull its models first)
# Settings of the caller's environment the demo's node must not take: they
# would point it at another node's database, ports or tokens.
NOT_INHERITED = ("POSTGRES_URL", "DATA_DIR", "GRPC_HOST", "GRPC_PORT", "GRPC_TARGET", "HTTP_HOST", "HTTP_PORT",
                 "METRICS_PORT", "WORKER_HEALTH_PORT", "AUTH_TOKENS", "AUTH_TOKENS_FILE", "TLS_CERT_FILE",
                 "TLS_KEY_FILE", "GRPC_CA_FILE", "OLLAMA_HOST", "API_URL", "DDS_URL", "POSEMESH_EMAIL",
                 "POSEMESH_PASSWORD", "WEBHOOK_ALLOW_HOSTS", "WEBHOOK_ALLOW_NETWORKS")
FAKE_MODELS = ("VLM_MODEL", "LLM_MODEL")  # the fake Ollama holds the default models only


class NodeStopped(Exception):
    pass


def wait_for_node(channel: grpc.Channel, node: subprocess.Popen, log_path: Path) -> None:
    """Returns once the node answers gRPC; raises NodeStopped with its last
    log lines if it exits first."""
    ready = grpc.channel_ready_future(channel)
    deadline = time.monotonic() + NODE_START
    while time.monotonic() < deadline:
        if node.poll() is not None:
            last = log_path.read_text(errors="replace").splitlines()[-5:]
            raise NodeStopped(f"the node stopped at start (exit {node.returncode}); its last lines, from {log_path}:\n  "
                              + "\n  ".join(last))
        try:
            ready.result(timeout=0.5)
            return
        except grpc.FutureTimeoutError:
            pass
    raise NodeStopped(f"the node did not answer gRPC within {NODE_START} s; see {log_path}")


def create_job(jobs: jobs_pb2_grpc.JobServiceStub, webhook_url: str) -> jobs_pb2.Job:
    request = jobs_pb2.CreateJobRequest(job_type="task_timing_v1", domain_id=DEMO_DOMAIN_ID)
    request.query.update({"ids": []})
    request.input.update(
        {"prompt": PROMPT, "vlm_prompt": "Describe what you see in this image", "webhook_url": webhook_url}
    )
    attempts = 50  # the server may still be applying migrations
    while True:
        try:
            return jobs.CreateJob(request, timeout=10).job
        except grpc.RpcError as exc:
            attempts -= 1
            if exc.code() != grpc.StatusCode.UNAVAILABLE or not attempts:
                raise
            time.sleep(0.2)


def moment(found: dict | None, photos: dict[str, tuple[int, str]]) -> str:
    if not found:
        return "not found"
    position, name = photos.get(found["image_id"], (0, found["image_id"]))
    return f"photo {position} of {len(photos)} ({name}, taken {found['timestamp']})"


def tell_result(job: jobs_pb2.Job, photos: dict[str, tuple[int, str]]) -> None:
    output = json_format.MessageToDict(job.output)
    print("\ntimeline (the original's `logs`: one caption per photo):")
    print("  " + output["logs"].strip().replace("\n", "\n  "))
    task = output["task"]
    print(f"\nthe task, as the LLM read it from the timeline: {PROMPT!r}")
    print(f"  start:    {moment(task.get('start'), photos)}")
    print(f"  end:      {moment(task.get('end'), photos)}")
    if task.get("start") and task.get("end"):
        span = datetime.fromisoformat(task["end"]["timestamp"]) - datetime.fromisoformat(task["start"]["timestamp"])
        print(f"  duration: {duration(span.total_seconds())}")
    print(f"  why:      {task['reasoning']}")


def run_job(target: str, node: subprocess.Popen, log_path: Path, webhook_url: str,
            photos: dict[str, tuple[int, str]]) -> None:
    with grpc.insecure_channel(target) as channel:
        wait_for_node(channel, node, log_path)
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = create_job(jobs, webhook_url)
        print(f"\ncreated job {job.id} over gRPC")
        final = job
        for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id)):
            print(f"  status: {jobs_pb2.JobStatus.Name(event.job.status).removeprefix('JOB_STATUS_').lower()}")
            final = event.job
        if final.status != jobs_pb2.JOB_STATUS_COMPLETED:
            raise NodeStopped(f"the job ended {jobs_pb2.JobStatus.Name(final.status)}: "
                              f"{final.error.code}: {final.error.message}")
        tell_result(final, photos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the demo job")
    parser.add_argument("--data-dir", default=DATA_DIR, help=f"the demo node's data and log (default {DATA_DIR})")
    parser.add_argument("--ollama", metavar="URL",
                        help="caption with the Ollama at URL (VLM_MODEL and LLM_MODEL, pulled when missing) "
                             "instead of the fake one")
    args = parser.parse_args()
    data_dir = Path(args.data_dir).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.exit(f"make demo: cannot make {data_dir}: {exc.strerror}")
    log_path = data_dir / "node.log"

    with ExitStack() as peers:
        posemesh = peers.enter_context(FakePosemesh())
        webhook = peers.enter_context(WebhookReceiver())
        posemesh.add_domain(DEMO_DOMAIN_ID)
        photos = {}
        for position, (name, data_type, data) in enumerate(demo_images(), 1):
            photos[posemesh.add_item(DEMO_DOMAIN_ID, name, data, data_type=data_type)] = (position, name)
        ollama_url = args.ollama or peers.enter_context(FakeOllama(latency=0.2)).url
        not_inherited = NOT_INHERITED if args.ollama else NOT_INHERITED + FAKE_MODELS
        grpc_port, http_port = free_port(), free_port()
        env = {
            **{k: v for k, v in os.environ.items() if k not in not_inherited},
            "OLLAMA_HOST": ollama_url,
            "API_URL": posemesh.api_url,
            "DDS_URL": posemesh.dds_url,
            "POSEMESH_EMAIL": posemesh.email,
            "POSEMESH_PASSWORD": posemesh.password,
            # The demo's webhook receiver is on this machine, where webhooks are refused by default.
            "WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
            "DATA_DIR": str(data_dir),
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(grpc_port),
            "GRPC_TARGET": f"127.0.0.1:{grpc_port}",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(http_port),
            "METRICS_PORT": "0",
            "WORKER_HEALTH_PORT": "0",
        }
        print("VLM Node demo: one task_timing_v1 job, from a domain's photos to a webhook, on this machine alone.")
        print(f"  photos:   {len(photos)} of a shelf, {DEMO_PHOTO_INTERVAL} s apart, in a fake posemesh domain "
              f"({posemesh.base_url})")
        if args.ollama:
            print(f"  captions: from the real Ollama at {ollama_url}")
        else:
            print(f"  captions: from a FAKE model: the fake Ollama ({ollama_url}) names each photo's main "
                  "colour; `make demo ARGS='--ollama http://localhost:11434'` uses a real Ollama")
        print(f"  webhook:  a receiver on this machine ({webhook.url})")
        print(f"  node:     console http://127.0.0.1:{http_port}/, gRPC 127.0.0.1:{grpc_port}, "
              f"PostgreSQL in {data_dir / 'postgres'}")
        print(f"  the node's log lines go to {log_path}")
        sys.stdout.flush()
        with log_path.open("w") as node_log:
            node = subprocess.Popen([sys.executable, "-m", "server.node"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=node_log, stderr=subprocess.STDOUT)
        try:
            run_job(f"127.0.0.1:{grpc_port}", node, log_path, webhook.url, photos)
            [delivery] = webhook.wait_for(1, timeout=30)
            print(f"\nwebhook delivered: {json.dumps(delivery.json)[:160]}...")
            if not args.once:
                print(f"\nthe node runs on (console http://127.0.0.1:{http_port}/); Ctrl-C stops it")
                node.wait()
        except NodeStopped as exc:
            sys.exit(f"make demo: {exc}")
        except KeyboardInterrupt:
            pass
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(60)


if __name__ == "__main__":
    main()
