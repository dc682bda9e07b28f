"""HEALTHCHECK of the vlm-node image: finds which of the node's processes
run in this container and asks each its plain-HTTP /health.

- `server.main`: METRICS_PORT (9100), answering while PostgreSQL does.
- `server.bridge.main`: HTTP_PORT (8080), over HTTPS when TLS_CERT_FILE is set.
- `worker.main`: WORKER_HEALTH_PORT (8081), answering while PostgreSQL does.
- `server.node` (everything in one container): the server and the bridge.

Exits 0 when healthy, 1 with one line saying why when not.
"""

import os
import ssl
import sys
import urllib.request
from itertools import pairwise
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
        for flag, module in pairwise(args):
            if flag == b"-m":
                modules.add(module.decode(errors="replace"))
    return modules


def check(port: str, *, tls: bool = False) -> str | None:
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/health"
    # Only liveness is asked here: the certificate names the service, not 127.0.0.1.
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as answer:
            return None if answer.status == 200 else f"{url} answered {answer.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def main() -> int:
    env = os.environ.get
    modules = running_modules()
    checks = []
    if modules & {"server.main", "server.node"}:
        checks.append((env("METRICS_PORT", "9100"), False))
    if modules & {"server.bridge.main", "server.node"}:
        checks.append((env("HTTP_PORT", "8080"), bool(env("TLS_CERT_FILE"))))
    if "worker.main" in modules:
        checks.append((env("WORKER_HEALTH_PORT", "8081"), False))
    if not checks:
        print("no vlm-node process is running", file=sys.stderr)
        return 1
    for port, tls in checks:
        if problem := check(port, tls=tls):
            print(problem, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
