"""`/health` says the bridge is alive; `/ready` says the node can work: its
gRPC server answers, and it reports the database (JobService) and Ollama
(InferenceService) as serving. `/metrics` is the bridge process's own."""

import grpc
from grpc_health.v1 import health_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.ops_http import metrics_endpoint

CHECKS = {
    "grpc": "",
    "postgres": "vlmnode.v1.JobService",
    "ollama": "vlmnode.v1.InferenceService",
}
TIMEOUT = 2.0  # seconds per check


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    checks = {}
    for name, service in CHECKS.items():
        try:
            answer = await request.app.state.health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT
            )
            checks[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status).lower()
        except grpc.aio.AioRpcError as exc:
            checks[name] = "unreachable" if exc.code() == grpc.StatusCode.UNAVAILABLE else exc.code().name.lower()
    ok = all(state == "serving" for state in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


routes = [Route("/health", live), Route("/ready", ready), Route("/metrics", metrics_endpoint)]
