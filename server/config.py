"""Settings from the environment, as the original README documents them.

A missing or malformed variable stops the process at start with one line
naming it (`ConfigError`).
"""

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, fields
from typing import Mapping


class ConfigError(Exception):
    pass


SINGLE_IMAGE_POLICIES = ("tile", "newest")
# Integer settings where 0 asks for the derived default.
ZERO_MEANS_DEFAULT = {"caption_slots", "vlm_max_images", "image_decode_slots"}


def _int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {n}")
    return n


def _float(name: str, value: str, lo: float, hi: float) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not lo <= x <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {x}")
    return x


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


DEFAULT_ALLOWED_ORIGINS = ",".join(
    f"{scheme}://{host}:*" for host in ("localhost", "127.0.0.1", "[::1]") for scheme in ("http", "https")
)
_ORIGIN = re.compile(r"[a-z][a-z0-9+.\-]*://(\[[0-9a-f:.]+\]|[a-z0-9\-._~%]+)(:(\d{1,5}|\*))?", re.IGNORECASE)


def _list(name: str, value: str, check) -> str:
    """A comma-separated list, each entry checked by `check` (which raises ValueError)."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        try:
            check(entry)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return ",".join(entries)


def _origin(entry: str) -> None:
    if entry != "*" and not _ORIGIN.fullmatch(entry):
        raise ValueError(f"{entry!r} is not an origin (scheme://host[:port], a port of * for any, or *)")


def _network(entry: str) -> None:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP network (e.g. 10.0.0.0/8, fd00::/8, 127.0.0.1)") from None


def _host(entry: str) -> None:
    if not re.fullmatch(r"(\*\.)?[a-z0-9\-._]+|\[?[0-9a-f:.]+\]?", entry, re.IGNORECASE):
        raise ValueError(f"{entry!r} is not a host name (e.g. hooks.internal, *.svc.cluster.local)")


LISTS = {"allowed_origins": _origin, "webhook_allow_networks": _network, "webhook_allow_hosts": _host}


def _url(name: str, value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    # Seed contract.
    postgres_url: str = ""  # empty: the run command starts a private server
    vlm_model: str = "moondream:1.8b"
    llm_model: str = "llama3:latest"
    ollama_host: str = "http://localhost:11434"
    data_dir: str = ""
    api_url: str = ""
    dds_url: str = ""
    client_id: str = "vlm-node"
    posemesh_email: str = ""
    posemesh_password: str = ""
    image_batch_size: int = 5
    # Node.
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_target: str = ""  # where the bridge finds the gRPC server; empty: localhost:GRPC_PORT
    ollama_pull: bool = True  # pull missing models at start, as the original
    # Ollama answers OLLAMA_NUM_PARALLEL requests per model at once (its own
    # default is 1) and queues the rest with nothing said; the node sends no
    # more than that per model and process, and waits for a slot itself.
    ollama_num_parallel: int = 1
    ollama_timeout: float = 120.0  # seconds of silence before a request is given up (a streamed answer resets it)
    ollama_answer_deadline: float = 600.0  # seconds a whole answer may take, however steadily it streams
    vlm_num_ctx: int = 4096  # tokens of context asked for the VLM (capped at what the model was trained for)
    llm_num_ctx: int = 8192  # tokens of context asked for the LLM; a longer timeline is read in windows
    vlm_max_images: int = 0  # images the VLM takes in one request; 0: as its family is known to take (moondream: 1)
    realtime_single_image: str = "tile"  # a batch for a one-image VLM: "tile" (one contact sheet) or "newest" (last frame)
    caption_max_tokens: int = 256  # longest caption, in tokens; the timeline must fit the LLM's context
    posemesh_timeout: float = 30.0  # seconds per posemesh request
    image_max_side: int = 1024  # pixels; the models see no more than this
    caption_slots: int = 0  # images captioned at once within one job; 0: OLLAMA_NUM_PARALLEL
    job_max_images: int = 1000  # images one job may take
    worker_jobs: int = 1  # jobs one worker runs at once
    workers: int = 1  # worker processes `python -m server.node` starts
    metrics_port: int = 9100  # the gRPC server process's /metrics and /health; 0: any free port
    worker_health_port: int = 8081  # a worker's /health and /metrics; 0: any free port
    job_lease: float = 30.0  # seconds a claim lasts without renewal
    job_max_attempts: int = 100  # attempts a job gets at most, however they end; a cap beside JOB_RETRY_FOR
    job_retry_wait: float = 2.0  # seconds before the first retry; doubles each time, up to JOB_RETRY_MAX_WAIT
    realtime_max_frame_bytes: int = 8 * 1024 * 1024
    realtime_max_batch: int = 16  # frames per realtime answer
    realtime_idle_timeout: float = 300.0  # seconds a stream may stay silent
    realtime_flush_after: float = 2.0  # seconds of quiet before queued frames are answered
    ws_ping_interval: float = 10.0  # seconds between the bridge's WebSocket pings, as the original
    auth_tokens: str = ""  # comma-separated bearer tokens; none: the node is open
    auth_tokens_file: str = ""  # one token a line
    tls_cert_file: str = ""  # PEM; with tls_key_file, gRPC and the bridge serve TLS
    tls_key_file: str = ""
    grpc_ca_file: str = ""  # the bridge's trust for a TLS gRPC server; default tls_cert_file
    webhook_secret: str = ""
    webhook_attempts: int = 5
    # Decoding images under a memory budget (server/images.py).
    image_max_pixels: int = 4096 * 4096  # width x height; glasses send up to ~5 Mpx, phones 12 Mpx
    image_decode_slots: int = 0  # images one process decodes at once; 0: one per core
    # The bridge's connections (server/bridge/connections.py).
    http_header_timeout: float = 10.0  # seconds for a request's head, from the connection's opening or its first byte
    http_max_connections: int = 1000  # connections served at once; a request past it is answered 503
    # Web pages (origins) whose scripts may call the bridge, besides its own origin:
    # scheme://host[:port], a port of * for any, or * for every page.
    allowed_origins: str = DEFAULT_ALLOWED_ORIGINS
    # Webhook receivers the node may reach although they are not public addresses
    # (loopback, private, link-local, ...): host names (*.suffix for subdomains) and CIDRs.
    webhook_allow_hosts: str = ""
    webhook_allow_networks: str = ""
    # A WatchJob (and the bridge's event stream over it) that has sent its job
    # rides out a database outage this long, then ends with UNAVAILABLE.
    watch_outage_limit: float = 300.0  # seconds
    # A job's transient failures (Ollama or posemesh down, 5xx, timeouts, its
    # worker lost) are retried for this long from the first failure in a row
    # (a caption made, or a PUT retry, starts the count afresh).
    job_retry_for: float = 900.0  # seconds
    job_retry_max_wait: float = 60.0  # seconds; the longest wait between two attempts
    log_level: str = "INFO"

    @property
    def caption_concurrency(self) -> int:
        return self.caption_slots or self.ollama_num_parallel

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    @property
    def posemesh_configured(self) -> bool:
        return bool(self.api_url and self.dds_url and self.posemesh_email and self.posemesh_password)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = raw
        parsed = {}
        for key, raw in values.items():
            name = key.upper()
            kind = type(getattr(cls, key))
            if key in ("ollama_host", "api_url", "dds_url"):
                parsed[key] = _url(name, raw)
            elif key == "postgres_url" and not raw.startswith(("postgres://", "postgresql://")):
                raise ConfigError(f"{name} must be a postgresql:// URL, got {raw!r}")
            elif key == "realtime_single_image":
                if raw not in SINGLE_IMAGE_POLICIES:
                    raise ConfigError(f"{name} must be one of {', '.join(SINGLE_IMAGE_POLICIES)}, got {raw!r}")
                parsed[key] = raw
            elif key == "log_level":
                if raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                    raise ConfigError(f"{name} must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
                parsed[key] = raw.upper()
            elif key in LISTS:
                parsed[key] = _list(name, raw, LISTS[key])
            elif kind is bool:
                parsed[key] = _bool(name, raw)
            elif kind is int:
                hi = 65535 if key.endswith("port") else 1 << 30
                parsed[key] = _int(name, raw, 0 if key in ZERO_MEANS_DEFAULT or key.endswith("port") else 1, hi)
            elif kind is float:
                parsed[key] = _float(name, raw, 0.001, 86_400)
            else:
                parsed[key] = raw
        settings = cls(**{**values, **parsed})
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
        for name in ("tls_cert_file", "tls_key_file", "grpc_ca_file", "auth_tokens_file"):
            path = getattr(settings, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{name.upper()} {path!r} is not a file")
        return settings


def load(program: str, *, need_postgres: bool = False) -> Settings:
    """The settings of a process, with logging set up; a bad setting ends the
    process with one line."""
    from server import logs

    try:
        settings = Settings.from_env()
        if need_postgres and not settings.postgres_url:
            raise ConfigError("POSTGRES_URL is required (or use `make run`, which starts a private PostgreSQL)")
    except ConfigError as exc:
        sys.exit(f"{program}: {exc}")
    logs.setup(settings.log_level)
    return settings
