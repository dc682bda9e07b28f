"""Realtime benchmark: what the node adds to an answer's latency.

Starts the fake Ollama and the node (gRPC server + bridge) as their own
processes, then times whole answers (one frame in, last chunk out) three
ways at 1 and at 50 concurrent streams: the ollama client calling the fake
Ollama directly (the baseline), gRPC Infer, and the WebSocket. Prints p50/p99
of each and what the node adds. Twice: with the fake answering at once,
where the figures at 50 streams measure CPU shared by every process on the
machine, and with the fake writing a token every 50 ms, as a model would.

    python -m bench.realtime [--answers 200] [--streams 50] [--size 640x480] [--token-delay 0.05]
"""

import argparse
import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time

import grpc
import ollama
import websockets

from bench.database import fresh_store, percentile
from devpeers.images import solid_jpeg
from devpeers.ports import free_port, wait_port
from vlmnode.v1 import inference_pb2 as pb
from vlmnode.v1 import inference_pb2_grpc

MODEL = "moondream:1.8b"
PROMPT = "What do you see?"


async def direct(host: str, image: bytes, n: int) -> list[float]:
    client = ollama.AsyncClient(host=host)
    encoded = base64.b64encode(image).decode()
    times = []
    for _ in range(n + 1):
        start = time.perf_counter()
        async for part in await client.generate(MODEL, PROMPT, images=[encoded], stream=True):
            if part.done:
                break
        times.append(time.perf_counter() - start)
    return times[1:]


async def via_grpc(target: str, image: bytes, n: int) -> list[float]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = inference_pb2_grpc.InferenceServiceStub(channel).Infer()
        await call.write(pb.InferRequest(config=pb.StreamConfig(prompt=PROMPT, batch_size=1)))
        times = []
        for _ in range(n + 1):
            start = time.perf_counter()
            await call.write(pb.InferRequest(frame=pb.Frame(image=image)))
            while not (await call.read()).chunk.done:
                pass
            times.append(time.perf_counter() - start)
        await call.done_writing()
        return times[1:]


async def via_websocket(url: str, image: bytes, n: int) -> list[float]:
    async with websockets.connect(url) as ws:
        await ws.send(PROMPT)
        times = []
        for _ in range(n + 1):
            start = time.perf_counter()
            await ws.send(image)
            while not json.loads(await ws.recv())["done"]:
                pass
            times.append(time.perf_counter() - start)
        return times[1:]


async def measure(run, image: bytes, streams: int, per_stream: int) -> list[float]:
    """Answer times of `streams` concurrent streams. Each run opens its own
    connection and leaves its first answer untimed: setting up a client (the
    ollama client loads its CA bundle) is not what we measure."""
    results = await asyncio.gather(*(run(image, per_stream) for _ in range(streams)))
    return [t for r in results for t in r]


def report(label: str, baseline: list[float], ours: dict[str, list[float]], targets: str) -> None:
    b50, b99 = percentile(baseline, 50) * 1000, percentile(baseline, 99) * 1000
    print(f"{label}: direct ollama client p50 {b50:7.2f} ms  p99 {b99:7.2f} ms  ({len(baseline)} answers)")
    for name, times in ours.items():
        p50, p99 = percentile(times, 50) * 1000, percentile(times, 99) * 1000
        print(
            f"  {name:9s} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms   added p50 {p50 - b50:+6.2f} ms"
            f"  p99 {p99 - b99:+6.2f} ms   ratio p50 {p50 / b50:.2f}"
        )
    print(f"  targets: {targets}")


@contextlib.asynccontextmanager
async def node_beside_fake_ollama(store_url: str, streams: int, token_delay: float):
    """The fake Ollama, the gRPC server and the bridge, each its own process;
    yields the three ways to an answer."""
    ollama_port, grpc_port, http_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "POSTGRES_URL": store_url,
        "OLLAMA_HOST": f"http://127.0.0.1:{ollama_port}",
        "GRPC_PORT": str(grpc_port),
        "HTTP_PORT": str(http_port),
        "OLLAMA_NUM_PARALLEL": str(streams + 4),  # as many slots as the fake has: no stream waits for one
        "IMAGE_BATCH_SIZE": "1",  # the WebSocket's batch: one frame, one answer
        "LOG_LEVEL": "WARNING",
    }
    fake = [sys.executable, "-m", "devpeers.fake_ollama", "--port", str(ollama_port),
            "--token-delay", str(token_delay), "--num-parallel", str(streams + 4)]
    procs = [
        subprocess.Popen(fake, stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "server.main"], env=env),
        subprocess.Popen([sys.executable, "-m", "server.bridge.main"], env=env),
    ]
    try:
        for port, proc in zip((ollama_port, grpc_port, http_port), procs, strict=True):
            await wait_port(port, proc)
        target, url = f"127.0.0.1:{grpc_port}", f"ws://127.0.0.1:{http_port}/api/v1/ws"
        yield {
            "direct": lambda image, n: direct(env["OLLAMA_HOST"], image, n),
            "gRPC": lambda image, n: via_grpc(target, image, n),
            "WebSocket": lambda image, n: via_websocket(url, image, n),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=200, help="answers at 1 stream")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--per-stream", type=int, default=20, help="answers per stream at --streams")
    parser.add_argument("--size", default="640x480", help="frame size")
    parser.add_argument("--token-delay", type=float, default=0.05,
                        help="seconds between tokens in the paced run (a small VLM on a GPU: ~20 tokens/s)")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    image = solid_jpeg("red", size=(width, height))
    print(f"frames {width}x{height} JPEG ({len(image)} bytes)")

    async with fresh_store() as store:
        async with node_beside_fake_ollama(store.url, args.streams, token_delay=0) as runs:
            for run in runs.values():  # warm up code paths
                await run(image, 5)
            print("\nfake Ollama answering at once (6 parts an answer): every process competes for the 2 cores")
            one = {name: await measure(run, image, 1, args.answers) for name, run in runs.items()}
            report("1 stream", one.pop("direct"), one, "added p50 <= 2 ms, p99 <= 10 ms")
            many = {name: await measure(run, image, args.streams, args.per_stream) for name, run in runs.items()}
            report(f"{args.streams} streams", many.pop("direct"), many, "added p50 <= 5 ms")
        async with node_beside_fake_ollama(store.url, args.streams, token_delay=args.token_delay) as runs:
            print(f"\nfake Ollama writing a token every {args.token_delay * 1000:g} ms: the model sets the pace")
            paced = {name: await measure(run, image, args.streams, args.per_stream // 2) for name, run in runs.items()}
            report(f"{args.streams} streams", paced.pop("direct"), paced, "added p50 <= 5 ms")


if __name__ == "__main__":
    asyncio.run(main())
