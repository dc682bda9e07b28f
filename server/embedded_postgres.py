"""A private PostgreSQL for local runs and tests when POSTGRES_URL is unset.

Uses the server binaries installed on the machine when there are any (run
as the `postgres` user when we are root, since initdb refuses root), and the
`pgserver` wheel otherwise.
"""

import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

# Durability is not what a throwaway test server is for.
FAST_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database of the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _installed_bindir() -> str | None:
    if path := shutil.which("pg_ctl"):
        return os.path.dirname(path)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(candidates[-1]) if candidates else None


class EmbeddedPostgres:
    """`start()` returns a URL; `stop()` stops the server and, when it was
    made in a temporary folder, deletes it."""

    def __init__(self, data_dir: str | None = None, *, fast: bool = False):
        self.keep = data_dir is not None
        self.root = Path(data_dir or tempfile.mkdtemp(prefix="vlmnode-pg-"))
        self.fast = fast
        self._pgserver = None
        self._bindir: str | None = None

    def start(self) -> str:
        self._bindir = _installed_bindir()
        if self._bindir:
            return self._start_installed()
        import pgserver  # the fallback: PostgreSQL inside a wheel

        self._pgserver = pgserver.get_server(str(self.root / "pgserver"), cleanup_mode="stop")
        return self._pgserver.get_uri()

    def _run(self, *args: str) -> None:
        cmd = [os.path.join(self._bindir, args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _start_installed(self) -> str:
        data = self.root / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.port = _free_port()
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if self.fast:
            opts += " " + FAST_SETTINGS
        self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(self.root / "postgres.log"), "-w", "start")
        log.info("started a private PostgreSQL in %s on port %d", self.root, self.port)
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def restart(self) -> None:
        """Stops and starts the server on the same port: its clients lose
        their connections, as in a database failover."""
        if self._pgserver is not None:
            raise NotImplementedError("restart needs the installed server binaries")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        if self._pgserver is not None:
            self._pgserver.cleanup()
        elif self._bindir:
            try:
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
            except subprocess.CalledProcessError as exc:
                log.warning("could not stop the private PostgreSQL: %s", exc.stderr.decode().strip())
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
