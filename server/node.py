"""`python -m server.node`: the whole node on one machine.

Starts a private PostgreSQL when POSTGRES_URL is unset (kept in
DATA_DIR/postgres between runs), then the gRPC server, the HTTP/WebSocket
bridge and WORKERS worker processes, and stops them all together.
"""

import os
import signal
import subprocess
import sys
import time

from server import logs
from server.config import load
from server.embedded_postgres import EmbeddedPostgres


def main() -> None:
    settings = load("vlm-node")
    logs.setup(settings.log_level)
    env = dict(os.environ)
    pg = None
    if not settings.postgres_url:
        data_dir = os.path.abspath(os.path.join(settings.data_dir, "postgres"))
        print(f"vlm-node: POSTGRES_URL is not set; starting a private PostgreSQL in {data_dir}", file=sys.stderr)
        pg = EmbeddedPostgres(data_dir)
        env["POSTGRES_URL"] = pg.start()

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
    try:
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
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
