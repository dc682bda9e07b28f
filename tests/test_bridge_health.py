"""`/health` and `/ready` of the bridge, read from the node's gRPC health
service."""

import httpx

from tests.conftest import running_bridge


async def test_ready_when_everything_serves(node):
    async with running_bridge(f"127.0.0.1:{node.port}") as base:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/health")).json() == {"status": "ok"}
            ready = await http.get("/ready")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "checks": {"grpc": "serving", "postgres": "serving", "ollama": "serving"},
            }


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
