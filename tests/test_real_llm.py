"""The node against a real model server: llama.cpp's llama-server with Gemma
3 270M (devpeers/llama_server.py; the `llama_server` fixture, two slots), its
OpenAI-compatible API met by the node's OpenAI engine with nothing faked but
the VLM (no vision model can be had here: captions come from the fake
Ollama). The model is small and not instruction-tuned, so what is checked is
the plumbing: a schema-shaped answer parsed and checked against the
timeline, a slot freed the moment a stream is dropped, the work of a server
killed mid-answer moved to another, a text-only model refused as a VLM."""

import asyncio
import dataclasses
import subprocess
import sys

from devpeers.llama_server import MODEL_ALIAS
from server.openai_engine import OpenAIEngine
from tests.fixtures import as_dict, create_request, running_worker, settings_env, wait_final, wait_for
from vlmnode.v1 import jobs_pb2

SLOT_CONTEXT = 4096  # the fixture's -c 8192 over its two slots


def on_llama(settings, llama_server, **kw):
    return dataclasses.replace(
        settings, llm_backend="openai", llm_base_url=f"{llama_server.url}/v1", llm_model=MODEL_ALIAS,
        llm_num_ctx=SLOT_CONTEXT, **kw,
    )


async def test_task_timing_with_its_llm_step_on_a_real_model(settings, jobs, posemesh, llama_server):
    async with running_worker(on_llama(settings, llama_server)):
        done = await wait_final(jobs, (await jobs.CreateJob(create_request())).job.id, timeout=240)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED, done.error
    output = as_dict(done.output)
    timeline = output["timeline"]
    ids = [row["image_id"] for row in timeline]
    assert len(ids) == 6 and output["decision"]["llm_calls"] == 1
    # The model's answer, constrained by the schema and parsed: its reasoning, and a start
    # and an end that are photos of the timeline, start first, or none (no task found).
    task = output["task"]
    assert set(task) == {"start", "end", "reasoning"} and task["reasoning"] == output["temporal_output"] != ""
    if task["start"] is not None or task["end"] is not None:
        assert task["start"]["image_id"] in ids and task["end"]["image_id"] in ids
        assert ids.index(task["start"]["image_id"]) <= ids.index(task["end"]["image_id"])


async def test_a_stream_dropped_mid_way_frees_the_real_servers_slot(llama_server):
    async with OpenAIEngine(f"{llama_server.url}/v1", role="LLM", model=MODEL_ALIAS, num_ctx=SLOT_CONTEXT) as engine:
        stream = engine.stream("Write a long story about a shop.", options={"num_predict": 2000})
        await anext(stream)
        assert llama_server.slots_busy() == 1
        await stream.aclose()
        # llama-server stops decoding when the client goes; its slot is free for the next request.
        await wait_for(lambda: llama_server.slots_busy() == 0, timeout=5, every=0.02)


async def test_the_real_text_model_as_the_vlm_stops_the_worker_in_one_line(settings, llama_server, processes):
    env = settings_env(settings, VLM_BACKEND="openai", VLM_BASE_URL=f"{llama_server.url}/v1", VLM_MODEL=MODEL_ALIAS)
    worker = subprocess.Popen([sys.executable, "-m", "worker.main"], stderr=subprocess.PIPE, env=env)
    processes.append(worker)
    _, stderr = await asyncio.to_thread(worker.communicate, None, 60)
    said = stderr.decode()
    assert worker.returncode == 1 and "Traceback" not in said
    assert said.strip().splitlines()[-1].startswith(f"vlm-node-worker: VLM_MODEL {MODEL_ALIAS} cannot see images: ")


async def test_two_real_servers_one_killed_mid_run_and_the_work_moves_to_the_other(llama_server):
    """Four structured answers over two llama-servers of two slots, two on
    each; the second is killed while it decodes its two: they are asked again
    of the first, and all four come back whole. The dead one is out until a
    probe finds it."""
    from devpeers.llama_server import LlamaServer
    from server.config import Settings
    from server.peers import engines

    # Forty words from a list: an answer long enough to be mid-way when the server dies, and bounded whatever
    # the small model writes (the grammar allows it little white space: common/json-schema-to-grammar.cpp).
    words = {"type": "array", "items": {"enum": ["shelf", "box", "aisle", "till"]}, "minItems": 40, "maxItems": 40}
    schema = {"type": "object", "properties": {"words": words}, "required": ["words"]}
    with LlamaServer(slots=2) as second:
        built = engines(Settings(
            llm_backend="openai", llm_base_url=f"{llama_server.url}/v1,{second.url}/v1", llm_model=MODEL_ALIAS,
            llm_slots=2, llm_num_ctx=SLOT_CONTEXT,
        ))
        try:
            asked = [
                asyncio.create_task(built.llm.complete_json(
                    "Name forty things in a shop.", schema, options={"num_predict": 2000, "temperature": 0}))
                for _ in range(4)
            ]
            await wait_for(lambda: second.slots_busy() == 2, timeout=60, every=0.05)
            second.kill()
            answers = await asyncio.wait_for(asyncio.gather(*asked), timeout=240)
            assert [len(a["words"]) for a in answers] == [40] * 4
            first, gone = built.llm.servers
            assert not first.out and gone.out.startswith("the LLM's OpenAI-compatible server")
        finally:
            await built.aclose()
