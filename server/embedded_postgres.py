"""A private PostgreSQL for local runs and tests when POSTGRES_URL is unset.

Uses the server binaries installed on the machine when there are any (run
as the `postgres` user when we are root, since initdb refuses root), and the
`pgserver` wheel otherwise. A server that does not start raises
`PostgresStartError`, saying in one line what failed and why.
"""

import glob
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from pgserver import PostgresServer

log = logging.getLogger(__name__)

# Durability is not what a throwaway test server is for.
FAST_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
MAX_REASON = 300  # characters of initdb's or the server's reason kept in PostgresStartError


class PostgresStartError(Exception):
    """The private server did not start; the message is one line: what
    failed, initdb's or the server's own reason, and who runs it when that
    matters."""


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database of the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installed_bindir() -> str | None:
    if path := shutil.which("pg_ctl"):
        return os.path.dirname(path)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(candidates[-1]) if candidates else None


def _as_postgres_user() -> bool:
    return os.geteuid() == 0


def _failure(program: str, exc: subprocess.CalledProcessError, root: Path, logged: Sequence[str] = ()) -> str:
    """One line for a failed initdb or pg_ctl: its own error, or, for a server
    that would not start, the last FATAL line it `logged` and its HINT."""
    said = [line.strip() for line in (exc.stderr or b"").decode(errors="replace").splitlines() if line.strip()]
    reason = next((line for line in said if "error:" in line), said[0] if said else f"exit status {exc.returncode}")
    for i in reversed(range(len(logged))):
        if level := next((lv for lv in ("FATAL:", "PANIC:") if lv in logged[i]), None):
            reason = logged[i].split(level, 1)[1].strip()
            if i + 1 < len(logged) and "HINT:" in logged[i + 1]:
                reason += f" ({logged[i + 1].split('HINT:', 1)[1].strip()})"
            break
    reason = " ".join(re.sub(r"^[\w ]+: (error: )?", "", reason).split())  # "initdb: error: " said once, by us
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    if not _as_postgres_user():
        return f"{program} failed: {reason}"
    line = f"{program}, run as the postgres user, failed: {reason}"
    if "permission denied" in reason.lower():
        line += f"; the postgres user must be able to enter every directory above {root}"
    return line


def _read_from(path: Path, offset: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


class EmbeddedPostgres:
    """`start()` returns a URL; `stop()` stops the server and, when it was
    made in a temporary folder, deletes it."""

    def __init__(self, data_dir: str | None = None, *, fast: bool = False):
        self.keep = data_dir is not None
        self.root = Path(data_dir or tempfile.mkdtemp(prefix="vlmnode-pg-"))
        self.fast = fast
        self._pgserver: PostgresServer | None = None
        self._bindir: str | None = None

    def start(self) -> str:
        self._bindir = installed_bindir()
        if self._bindir:
            return self._start_installed()
        import pgserver  # the fallback: PostgreSQL inside a wheel

        try:
            self._pgserver = pgserver.get_server(str(self.root / "pgserver"), cleanup_mode="stop")
        except (OSError, subprocess.SubprocessError) as exc:  # pgserver logs the command's own output
            raise PostgresStartError(f"pgserver could not start PostgreSQL in {self.root}: {exc}") from None
        return self._pgserver.get_uri()

    def _run(self, *args: str) -> None:
        assert self._bindir is not None
        cmd = [os.path.join(self._bindir, args[0]), *args[1:]]
        if _as_postgres_user():
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _start_installed(self) -> str:
        data = self.root / "data"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if _as_postgres_user():
                shutil.chown(self.root, "postgres", "postgres")
        except OSError as exc:
            raise PostgresStartError(f"cannot make {self.root}: {exc.strerror}") from None
        self.port = _free_port()
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if self.fast:
            opts += " " + FAST_SETTINGS
        server_log = self.root / "postgres.log"
        if not (data / "PG_VERSION").exists():
            try:
                self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
            except subprocess.CalledProcessError as exc:
                raise PostgresStartError(_failure("initdb", exc, self.root)) from None
        logged_before = server_log.stat().st_size if server_log.exists() else 0  # pg_ctl appends to it
        try:
            self._run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(server_log), "-w", "start")
        except subprocess.CalledProcessError as exc:
            logged = _read_from(server_log, logged_before)
            raise PostgresStartError(_failure("pg_ctl start", exc, self.root, logged)) from None
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
