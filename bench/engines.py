"""Engines benchmark: the node on Ollama beside the node on an
OpenAI-compatible server, and the node's OpenAI engine over a real model.

1. The same task_timing_v1 job (50 photos, 0.2 s an answer) captioned
   through the real worker against the strict fake Ollama (OLLAMA_NUM_PARALLEL
   1, as Ollama ships) and against the fake OpenAI-compatible server with 8
   batched slots (vLLM's continuous batching; VLM_SLOTS 8): wall time and
   images/s.
2. A real llama-server with Gemma 3 270M on this machine's CPU
   (devpeers/llama_server.py; skipped where scripts/ensure-llama-server.sh
   has not built it): time to first token and tokens/s asked directly with the
   `openai` client, beside the same through the node's OpenAIEngine; the
   difference is what the engine adds.

    python -m bench.engines [--images 50] [--latency 0.2] [--slots 8] [--asks 10]

Prints figures and ratios; never fails.
"""

import argparse
import asyncio
import logging
import statistics
import time

from openai import AsyncOpenAI

from bench.database import fresh_store
from bench.task_timing import add_photos, run_job, settings_for
from devpeers.fake_ollama import FakeOllama
from devpeers.fake_openai import DEFAULT_MODELS, FakeOpenAI
from devpeers.fake_posemesh import FakePosemesh
from devpeers.llama_server import MODEL_ALIAS, LlamaServer, Unavailable
from server.openai_engine import OpenAIEngine

COLOURS = ["white", "red", "green", "blue", "yellow"]
VLM = DEFAULT_MODELS[0].name
PROMPT = "Describe a shop shelf in one long paragraph."


async def captions(args) -> None:
    with FakePosemesh() as posemesh:
        async with fresh_store() as store:
            domain_id, _ = add_photos(posemesh, [COLOURS[n % len(COLOURS)] for n in range(args.images)])
            runs = {}
            with FakeOllama(latency=args.latency) as ollama:
                runs["Ollama, 1 slot (its default)"], _ = await run_job(
                    store, settings_for(store, ollama, posemesh), domain_id)
                with FakeOpenAI(slots=args.slots, latency=args.latency) as server:
                    settings = settings_for(store, ollama, posemesh, vlm_backend="openai", vlm_base_url=server.url,
                                            vlm_model=VLM, vlm_slots=args.slots)
                    runs[f"OpenAI-compatible, {args.slots} batched slots"], _ = await run_job(store, settings, domain_id)
    baseline = runs["Ollama, 1 slot (its default)"]
    print(f"1. task_timing_v1, {args.images} images, {args.latency * 1000:.0f} ms an answer:")
    for label, seconds in runs.items():
        print(f"  {label:<36} {seconds:6.2f} s  {args.images / seconds:6.1f} images/s"
              f"  {baseline / seconds:5.2f}x the Ollama run")
    print("  2 such servers: not yet (many servers per model is the next slice)")


async def first_token_and_rate(chunks) -> tuple[float, float]:
    """Seconds to the first text, and tokens (chunks of text) a second after it."""
    start = time.perf_counter()
    first = None
    count = 0
    async for text in chunks:
        if not text:
            continue
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "no text came"
    return first - start, (count - 1) / (end - first) if end > first and count > 1 else 0.0


async def direct(client: AsyncOpenAI, tokens: int):
    stream = await client.chat.completions.create(
        model=MODEL_ALIAS, messages=[{"role": "user", "content": PROMPT}], stream=True, max_tokens=tokens,
        temperature=0,
    )
    async for chunk in stream:
        if chunk.choices:
            yield chunk.choices[0].delta.content or ""


async def through_engine(engine: OpenAIEngine, tokens: int):
    async for chunk in engine.stream(PROMPT, options={"num_predict": tokens, "temperature": 0}):
        yield chunk.text


async def real_model(args) -> None:
    print(f"2. a real llama-server, Gemma 3 270M on this CPU, {args.asks} answers of {args.tokens} tokens each way:")
    try:
        server = LlamaServer(slots=1).start()
    except Unavailable as exc:
        print(f"  skipped: {exc}")
        return
    try:
        figures: dict[str, list[tuple[float, float]]] = {"direct (openai client)": [], "through the node's engine": []}
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        async with OpenAIEngine(f"{server.url}/v1", role="LLM", model=MODEL_ALIAS, num_ctx=4096, slots=1) as engine:
            await first_token_and_rate(direct(client, args.tokens))  # warm the server's cache alike for both
            for _ in range(args.asks):  # alternated, so that drift in the machine falls on both
                figures["direct (openai client)"].append(await first_token_and_rate(direct(client, args.tokens)))
                figures["through the node's engine"].append(
                    await first_token_and_rate(through_engine(engine, args.tokens)))
        await client.close()
    finally:
        server.stop()
    p50 = {label: (statistics.median(f for f, _ in runs), statistics.median(r for _, r in runs))
           for label, runs in figures.items()}
    for label, (first, rate) in p50.items():
        print(f"  {label:<28} first token p50 {first * 1000:7.1f} ms   {rate:5.1f} tokens/s")
    added = p50["through the node's engine"][0] - p50["direct (openai client)"][0]
    print(f"  added by the engine to the first token: {added * 1000:+.1f} ms p50 (target <= 2 ms); "
          f"over gRPC and the WebSocket needs a vision model, which cannot be had here")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds a fake takes per answer")
    parser.add_argument("--slots", type=int, default=8, help="the OpenAI-compatible fake's batched slots")
    parser.add_argument("--asks", type=int, default=10, help="answers asked of the real model each way")
    parser.add_argument("--tokens", type=int, default=64, help="tokens of each answer from the real model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    await captions(args)
    await real_model(args)


if __name__ == "__main__":
    asyncio.run(main())
