"""`/health` and `/ready` of the bridge, read from the node's gRPC health
service."""

import asyncio

import httpx

from tests.fixtures import running_bridge


async def test_ready_when_everything_serves(node):
    async with running_bridge(f"127.0.0.1:{node.port}") as base:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/health")).json() == {"status": "ok"}
            ready = await http.get("/ready")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "checks": {"grpc": "serving", "postgres": "serving", "ollama": "serving"},
                "model_servers": [{"role": "VLM+LLM", "url": node.settings.ollama_host, "status": "serving"}],
            }


async def test_ready_lists_each_model_server_and_holds_while_one_serves(settings, fake_ollama):
    """Two Ollamas for both roles, one stopped: the node is ready on the other,
    and /ready says which is out."""
    import dataclasses

    from devpeers.fake_ollama import DEFAULT_MODELS, FakeOllama
    from server.grpc_server import NodeServer

    with FakeOllama(DEFAULT_MODELS) as second:
        urls = f"{fake_ollama.url},{second.url}"
        node = NodeServer(dataclasses.replace(settings, vlm_base_url=urls, llm_base_url=urls))
        await node.start()
        try:
            second.stop()
            await node.monitor.check_once()
            async with running_bridge(f"127.0.0.1:{node.port}") as base, httpx.AsyncClient(base_url=base) as http:
                ready = await http.get("/ready")
                assert ready.status_code == 200 and ready.json()["checks"]["ollama"] == "serving"
                assert sorted(ready.json()["model_servers"], key=lambda s: s["url"] != fake_ollama.url) == [
                    {"role": "VLM+LLM", "url": fake_ollama.url, "status": "serving"},
                    {"role": "VLM+LLM", "url": second.url, "status": "not_serving"},
                ]
                fake_ollama.stop()
                await node.monitor.check_once()
                ready = await http.get("/ready")
                assert ready.status_code == 503 and ready.json()["checks"]["ollama"] == "not_serving"
                assert {s["status"] for s in ready.json()["model_servers"]} == {"not_serving"}
        finally:
            await node.stop(grace=1)


async def test_not_ready_without_ollama(node, fake_ollama):
    fake_ollama.stop()
    await node.monitor.check_once()
    async with running_bridge(f"127.0.0.1:{node.port}") as base:
        async with httpx.AsyncClient(base_url=base) as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"grpc": "serving", "postgres": "serving", "ollama": "not_serving"}
            assert (await http.get("/health")).status_code == 200


async def test_not_ready_without_the_node():
    async with running_bridge("127.0.0.1:9") as base:
        async with httpx.AsyncClient(base_url=base) as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503
            assert set(ready.json()["checks"].values()) == {"unreachable"}
            assert (await http.get("/health")).status_code == 200


async def test_health_answers_beside_silent_connections_which_are_closed_in_time():
    """As `python -m server.bridge.main` serves it: a connection that sends
    nothing is closed after HTTP_HEADER_TIMEOUT, and meanwhile takes nothing
    from the others."""
    from server.config import Settings

    async with running_bridge("127.0.0.1:9", Settings(http_header_timeout=0.5)) as base:
        port = int(base.rsplit(":", 1)[1])
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/health")).status_code == 200
        for reader, writer in silent:
            assert await asyncio.wait_for(reader.read(), 30) == b"", "closed by the bridge, unanswered"
            writer.close()
