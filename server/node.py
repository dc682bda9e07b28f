"""`python -m server.node`: the whole node on one machine.

Starts a private PostgreSQL when POSTGRES_URL is unset (kept in
DATA_DIR/postgres between runs), then the gRPC server, the HTTP/WebSocket
bridge and WORKERS worker processes, and stops them all together. Once the
bridge answers it logs where the console, REST and gRPC are.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from server import logs
from server.config import Settings, load
from server.embedded_postgres import EmbeddedPostgres, PostgresStartError

log = logging.getLogger("server.node")  # also when run as __main__

POLL = 0.2  # seconds between two looks at the children (and, until it answers, at the bridge's port)
WILDCARDS = ("", "0.0.0.0", "::")  # hosts that listen on every address


def _reachable_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    if host in WILDCARDS:
        return "localhost"
    return f"[{host}]" if ":" in host else host


def addresses(settings: Settings) -> str:
    """The line that tells a newcomer where to go: the console, REST and gRPC."""
    http = f"{'https' if settings.tls else 'http'}://{_reachable_host(settings.http_host)}:{settings.http_port}"
    return (f"console: {http}/, REST: {http}/api/v1/jobs, "
            f"gRPC: {_reachable_host(settings.grpc_host)}:{settings.grpc_port}{' (TLS)' if settings.tls else ''}")


def _answers(host: str, port: int) -> bool:
    if host in WILDCARDS:
        host = "::1" if host == "::" else "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=POLL):
            return True
    except OSError:
        return False


def private_postgres(settings: Settings) -> tuple[EmbeddedPostgres, str]:
    """A private PostgreSQL in DATA_DIR/postgres, started, and its URL; when
    it does not start, one line saying why and how to go on, and exit 1."""
    data_dir = os.path.abspath(os.path.join(settings.data_dir, "postgres"))
    log.info("POSTGRES_URL is not set; starting a private PostgreSQL in %s", data_dir)
    pg = EmbeddedPostgres(data_dir)
    try:
        return pg, pg.start()
    except PostgresStartError as exc:
        sys.exit(f"vlm-node: the private PostgreSQL in {data_dir} did not start: {str(exc).rstrip('.')}. "
                 "Set DATA_DIR to another directory, or POSTGRES_URL to a PostgreSQL of your own.")


def main() -> None:
    settings = load("vlm-node")
    logs.setup(settings.log_level)
    env = dict(os.environ)
    pg = None
    if not settings.postgres_url:
        pg, env["POSTGRES_URL"] = private_postgres(settings)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Migrations run under an advisory lock, so all may start at once.
    children = [
        subprocess.Popen([sys.executable, "-m", "server.main"], env=env),
        subprocess.Popen([sys.executable, "-m", "server.bridge.main"], env=env),
    ]
    # Each worker on this machine gets its own health port.
    children += [
        subprocess.Popen(
            [sys.executable, "-m", "worker.main"],
            env={**env, "WORKER_HEALTH_PORT": str(settings.worker_health_port + n if settings.worker_health_port else 0)},
        )
        for n in range(settings.workers)
    ]
    announced = settings.http_port == 0  # a port chosen by the bridge itself cannot be told from here
    try:
        while not stopping and all(c.poll() is None for c in children):
            if not announced and _answers(settings.http_host, settings.http_port):
                log.info("%s", addresses(settings))
                announced = True
            time.sleep(POLL)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()
        if pg is not None:
            pg.stop()
    codes = [c.returncode for c in children if c.returncode not in (0, -signal.SIGTERM)]
    sys.exit(1 if codes and not stopping else 0)


if __name__ == "__main__":
    main()
