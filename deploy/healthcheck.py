"""HEALTHCHECK of the vlm-node image: finds which of the node's processes
runs in this container and asks it the way it can answer.

- `server.bridge.main`: GET /health on HTTP_PORT (the bridge is alive).
- `server.main`: gRPC `grpc.health.v1.Health/Check` on GRPC_PORT (the server
  answers and reports itself SERVING).
- `server.node` (everything in one container): both.
- `worker.main`: it has no port yet; healthy while the process runs.

Exits 0 when healthy, 1 with one line saying why when not.
"""

import os
import sys
import urllib.request
from pathlib import Path

TIMEOUT = 3.0  # seconds per check


def running_modules() -> set[str]:
    """The `python -m <module>` names of the processes in this container."""
    modules = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        for flag, module in zip(args, args[1:]):
            if flag == b"-m":
                modules.add(module.decode(errors="replace"))
    return modules


def check_bridge() -> str | None:
    url = f"http://127.0.0.1:{os.environ.get('HTTP_PORT', '8080')}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return None if answer.status == 200 else f"{url} answered {answer.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def check_server() -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{os.environ.get('GRPC_PORT', '50051')}"
    try:
        with grpc.insecure_channel(target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return f"gRPC health at {target}: {exc.code().name}"
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        return f"gRPC health at {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"
    return None


def main() -> int:
    modules = running_modules()
    checks = []
    if modules & {"server.main", "server.node"}:
        checks.append(check_server)
    if modules & {"server.bridge.main", "server.node"}:
        checks.append(check_bridge)
    if not checks and "worker.main" not in modules:
        print("no vlm-node process is running", file=sys.stderr)
        return 1
    for check in checks:
        if problem := check():
            print(problem, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
