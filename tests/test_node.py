"""`python -m server.node`: without POSTGRES_URL it starts a private
PostgreSQL, and when that fails for real it says in one line what failed, why
(initdb's or the server's own words) and what to do, and exits 1 without a
traceback; once up, it says where the console, REST and gRPC are."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings
from server.embedded_postgres import EmbeddedPostgres, installed_bindir
from server.node import addresses

ROOT = Path(__file__).resolve().parent.parent
FIX = "Set DATA_DIR to another directory, or POSTGRES_URL to a PostgreSQL of your own."

needs_binaries = pytest.mark.skipif(
    installed_bindir() is None, reason="initdb's and pg_ctl's messages need the machine's PostgreSQL binaries"
)


def start_node(data_dir: Path) -> str:
    """The one line the node says on its way out (its JSON log lines aside)."""
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "server.node"], cwd=ROOT, env={**env, "DATA_DIR": str(data_dir)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    plain = []
    for line in proc.stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    assert len(plain) == 1, proc.stderr
    [said] = plain
    postgres_dir = os.path.abspath(data_dir / "postgres")
    assert said.startswith(f"vlm-node: the private PostgreSQL in {postgres_dir} did not start: "), said
    assert said.endswith(FIX), said
    return said


def test_a_data_dir_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("")
    said = start_node(tmp_path / "file" / "data")
    assert f"cannot make {tmp_path / 'file' / 'data' / 'postgres'}: Not a directory" in said


@needs_binaries
def test_initdb_refusing_says_its_own_reason(open_dir):
    (open_dir / "postgres" / "data").mkdir(parents=True)
    (open_dir / "postgres" / "data" / "left-over").write_text("")
    said = start_node(open_dir)
    assert "initdb" in said and "failed: " in said
    assert f'directory "{open_dir}/postgres/data" exists but is not empty' in said


@needs_binaries
def test_a_data_dir_in_use_by_another_server(open_dir):
    """What a second node on the same DATA_DIR meets: the server refuses the
    locked directory, and the line gives its reason and hint."""
    other = EmbeddedPostgres(str(open_dir / "postgres"))
    other.start()
    try:
        said = start_node(open_dir)
    finally:
        other.stop()
    assert "pg_ctl start" in said and 'lock file "postmaster.pid" already exists' in said
    assert "Is another postmaster" in said


@needs_binaries
@pytest.mark.skipif(os.geteuid() != 0, reason="as root the server runs as the postgres user")
def test_as_root_a_directory_the_postgres_user_cannot_enter(open_dir):
    """The checkout under a directory only root may enter (/root, or a mode 0700
    temporary folder), as the issue met it."""
    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)
    said = start_node(locked / "data")
    assert "initdb, run as the postgres user, failed: " in said
    assert "Permission denied" in said
    assert f"the postgres user must be able to enter every directory above {locked}/data/postgres" in said


def test_the_start_up_line_says_where_the_node_is(tmp_path):
    assert addresses(Settings.from_env({})) == (
        "console: http://localhost:8080/, REST: http://localhost:8080/api/v1/jobs, gRPC: localhost:50051"
    )
    own = Settings.from_env({"HTTP_HOST": "127.0.0.1", "HTTP_PORT": "9000", "GRPC_HOST": "::1", "GRPC_PORT": "9001"})
    assert addresses(own) == (
        "console: http://127.0.0.1:9000/, REST: http://127.0.0.1:9000/api/v1/jobs, gRPC: [::1]:9001"
    )
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    tls = Settings.from_env({"TLS_CERT_FILE": str(tmp_path / "cert.pem"), "TLS_KEY_FILE": str(tmp_path / "key.pem")})
    assert addresses(tls) == (
        "console: https://localhost:8080/, REST: https://localhost:8080/api/v1/jobs, gRPC: localhost:50051 (TLS)"
    )
