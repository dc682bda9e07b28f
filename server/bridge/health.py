"""`/health` says the bridge is alive; `/ready` says the node can work: its
gRPC server answers, and it reports the database (JobService) and the model
servers (InferenceService) as serving, and lists each model server with its
own status (server/health_monitor.py). `/metrics` is the bridge process's own."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.ops_http import metrics_endpoint

CHECKS = {
    "grpc": "",
    "postgres": "vlmnode.v1.JobService",
    "ollama": "vlmnode.v1.InferenceService",
}
SERVERS = CHECKS["ollama"] + "/"  # the prefix of each model server's service
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
    body: dict[str, object] = {"status": "ready" if ok else "not ready", "checks": checks}
    if checks["grpc"] != "unreachable":
        body["model_servers"] = await _model_servers(request.app.state.health)
    return JSONResponse(body, status_code=200 if ok else 503)


async def _model_servers(stub: health_pb2_grpc.HealthStub) -> list[dict]:
    """Each model server the gRPC server reports (services named INFERENCE/<role>/<url>)."""
    try:
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=TIMEOUT)
    except grpc.aio.AioRpcError:
        return []  # a server without List (older): no detail
    servers = []
    for name, answer in listed.statuses.items():
        if name.startswith(SERVERS):
            role, url = name.removeprefix(SERVERS).split("/", 1)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status).lower()
            servers.append({"role": role, "url": url, "status": status})
    return servers


routes = [Route("/health", live), Route("/ready", ready), Route("/metrics", metrics_endpoint)]
