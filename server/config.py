"""Settings from the environment, as the original README documents them.

Each setting is one field of `Settings`, declared by its kind (`count`,
`seconds`, `port`, `url`, ...): its default, bounds, unit and one-line
description are stated there and nowhere else. `from_env` reads every
variable by that declaration alone, then checks the rules that span settings
(`RULES`). The README's Configuration table is printed from the declarations
(`python -m server.config --markdown`; tests/test_config.py fails when the
two differ). A missing or malformed variable stops the process at start with
one line naming it (`ConfigError`).
"""

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal

from server.destinations import allowed_host, allowed_network
from server.origins import allowed_origin


class ConfigError(Exception):
    pass


INT_MAX = 1 << 30  # the bound of a count that has no bound of its own
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BACKENDS = ("ollama", "openai")  # Ollama's native API; the OpenAI-compatible Chat Completions API
DEFAULT_ALLOWED_ORIGINS = ",".join(
    f"{scheme}://{host}:*" for host in ("localhost", "127.0.0.1", "[::1]") for scheme in ("http", "https")
)


# How one kind of setting is read: (NAME, the variable's text, its spec) -> value.
Reader = Callable[[str, str, "Spec"], Any]


@dataclass(frozen=True)
class Spec:
    """What a setting's field declares besides its default."""

    doc: str
    read: Reader
    accepted: str = ""  # the values it takes, as the README says them
    unit: str = ""
    lo: float = 0
    hi: float = 0
    choices: tuple[str, ...] = ()
    check: Callable[[str], object] | None = None  # one entry of a list; raises ValueError
    shown: str = ""  # the default as the README says it, where the value alone would not say it


def spec(f: Field) -> Spec:
    return f.metadata["spec"]


def _read_text(name: str, raw: str, s: Spec) -> str:
    return raw


def _read_int(name: str, raw: str, s: Spec) -> int:
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not s.lo <= n <= s.hi:
        raise ConfigError(f"{name} must be between {s.lo} and {s.hi}, got {n}")
    return n


def _read_float(name: str, raw: str, s: Spec) -> float:
    try:
        x = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not s.lo <= x <= s.hi:
        raise ConfigError(f"{name} must be between {s.lo} and {s.hi}, got {x}")
    return x


def _read_bool(name: str, raw: str, s: Spec) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _read_url(name: str, raw: str, s: Spec) -> str:
    try:
        return http_url(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {exc}") from None


def http_url(raw: str) -> str:
    """An http(s) URL without its trailing slash; ValueError saying what it must be."""
    if not raw.startswith(("http://", "https://")):
        raise ValueError(f"an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _read_postgres_url(name: str, raw: str, s: Spec) -> str:
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ConfigError(f"{name} must be a postgresql:// URL, got {raw!r}")
    return raw


def _read_choice(name: str, raw: str, s: Spec) -> str:
    if raw not in s.choices:
        raise ConfigError(f"{name} must be one of {', '.join(s.choices)}, got {raw!r}")
    return raw


def _read_level(name: str, raw: str, s: Spec) -> str:
    if raw.upper() not in s.choices:
        raise ConfigError(f"{name} must be {', '.join(s.choices[:-1])} or {s.choices[-1]}, got {raw!r}")
    return raw.upper()


def _read_path(name: str, raw: str, s: Spec) -> str:
    if not os.path.isfile(raw):
        raise ConfigError(f"{name} {raw!r} is not a file")
    return raw


def _read_list(name: str, raw: str, s: Spec) -> str:
    """Comma-separated entries, each checked by the function its consumer
    reads it with; kept as text, blanks dropped."""
    assert s.check is not None, "a list declares how its entries are checked"
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    for entry in entries:
        try:
            s.check(entry)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return ",".join(entries)


# The kinds of setting. Each returns a dataclass field carrying its Spec.

def _setting(default: object, doc: str, read: Reader, **kw: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(doc, read, **kw)})


def text(default: str, doc: str, *, shown: str = "") -> Any:
    return _setting(default, doc, _read_text, shown=shown)


def secret(doc: str) -> Any:
    return _setting("", doc, _read_text)


def url(default: str, doc: str, *, shown: str = "") -> Any:
    return _setting(default, doc, _read_url, accepted="http(s) URL", shown=shown)


def path(doc: str, *, shown: str = "") -> Any:
    return _setting("", doc, _read_path, accepted="a file", shown=shown)


def flag(default: bool, doc: str) -> Any:
    return _setting(default, doc, _read_bool, accepted="true or false")


def count(default: int, doc: str, *, unit: str = "", lo: int = 1, hi: int = INT_MAX) -> Any:
    accepted = f"{lo} or more" if hi == INT_MAX else f"{lo} to {hi}"
    return _setting(default, doc, _read_int, accepted=f"{accepted} {unit}".strip(), unit=unit, lo=lo, hi=hi)


def port(default: int, doc: str) -> Any:
    return count(default, doc, lo=0, hi=65535)


def seconds(default: float, doc: str) -> Any:
    lo, hi = 0.001, 86_400  # a millisecond to a day
    return _setting(default, doc, _read_float, accepted=f"{lo:g} to {hi:g} s", unit="s", lo=lo, hi=hi)


def choice(default: str, doc: str, choices: tuple[str, ...]) -> Any:
    return _setting(default, doc, _read_choice, accepted=" or ".join(f"`{c}`" for c in choices), choices=choices)


def entries(default: str, doc: str, check: Callable[[str], object], *, shown: str = "",
            accepted: str = "comma-separated") -> Any:
    return _setting(default, doc, _read_list, accepted=accepted, check=check, shown=shown)


Role = Literal["VLM", "LLM"]
ROLES: tuple[Role, ...] = ("VLM", "LLM")


@dataclass(frozen=True)
class RoleSettings:
    """One role's engine, as Settings.role reads it from the VLM_* or LLM_* settings."""

    name: Role
    backend: str  # one of BACKENDS
    urls: tuple[str, ...]  # its servers, one or more
    model: str
    api_key: str
    api_key_file: str
    slots: int  # requests each server answers at once
    num_ctx: int


@dataclass(frozen=True)
class Settings:
    # The seed's settings.
    postgres_url: str = _setting(
        "", "PostgreSQL connection string", _read_postgres_url, accepted="postgresql:// URL",
        shown="a private server (`make run`)",
    )
    vlm_model: str = text("moondream:1.8b", "Vision model name, as the VLM's server lists it")
    llm_model: str = text("llama3:latest", "Language model name, as the LLM's server lists it")
    ollama_host: str = url("http://localhost:11434", "Ollama server URL")
    data_dir: str = text(".vlmnode-data", "Where `make run` keeps its private PostgreSQL")
    api_url: str = url("", "Auki API URL")
    dds_url: str = url("", "Domain discovery service URL")
    client_id: str = text("vlm-node", "Client identifier, any string that helps identify you")
    posemesh_email: str = secret("posemesh account email")
    posemesh_password: str = secret("posemesh account password")
    posemesh_timeout: float = seconds(30.0, "Time per posemesh request")
    image_batch_size: int = count(5, "Frames per realtime answer when the stream asks for no batch size", unit="frames")
    # Where the node listens.
    grpc_host: str = text("0.0.0.0", "gRPC listen address")
    grpc_port: int = port(50051, "gRPC listen port")
    http_host: str = text("0.0.0.0", "HTTP/WebSocket bridge listen address")
    http_port: int = port(8080, "HTTP/WebSocket bridge listen port")
    grpc_target: str = text("", "Where the bridge finds the gRPC server", shown="`localhost:GRPC_PORT`")
    # Realtime streams.
    realtime_max_frame_bytes: int = count(8 * 1024 * 1024, "Largest frame a stream accepts", unit="bytes")
    realtime_max_batch: int = count(16, "Most frames per realtime answer", unit="frames")
    realtime_idle_timeout: float = seconds(300.0, "Time a stream may stay silent")
    realtime_flush_after: float = seconds(2.0, "Quiet before queued frames are answered")
    # Ollama. It answers OLLAMA_NUM_PARALLEL requests per model at once (its
    # own default is 1) and queues the rest with nothing said; the node sends no
    # more than that per model and process, and waits for a slot itself.
    ollama_pull: bool = flag(True, "Pull missing models at start, as the original")
    ollama_num_parallel: int = count(
        1, "Requests Ollama answers at once per model; the node sends no more per model and process "
        "(Compose and the chart give Ollama the same value)", unit="requests",
    )
    ollama_timeout: float = seconds(
        120.0, "Silence before a request to Ollama or an OpenAI-compatible server is given up (every request "
        "streams, so an answer resets it)"
    )
    ollama_answer_deadline: float = seconds(600.0, "Time a whole answer may take, however steadily it streams")
    vlm_num_ctx: int = count(
        4096, "Context asked for the VLM, capped at what the model was trained for (Ollama) or is served with "
        "(`openai`: `/v1/models`)", unit="tokens"
    )
    llm_num_ctx: int = count(
        8192, "Context asked for the LLM; a longer timeline is read in windows", unit="tokens"
    )
    # The engines: which API each role's model server speaks, and where. Both
    # roles are on Ollama (OLLAMA_HOST) unless told otherwise; an
    # OpenAI-compatible server (vLLM, SGLang, llama-server) needs its URL, and
    # serves one role with VLM_SLOTS or LLM_SLOTS requests at once.
    vlm_backend: str = choice("ollama", "The API the VLM's server speaks: Ollama's, or OpenAI's (vLLM, SGLang, "
                              "llama-server)", BACKENDS)
    vlm_base_url: str = entries(
        "", "The VLM's servers, one or more: for `openai` each one's API root (e.g. `http://vllm:8000/v1`); "
        "each request goes to the least loaded, and one that fails is left out until it answers again",
        http_url, shown="`OLLAMA_HOST`", accepted="http(s) URLs, comma-separated",
    )
    vlm_api_key: str = secret("The API key of the VLM's server (`openai`), if it asks for one")
    vlm_api_key_file: str = path("A file holding `VLM_API_KEY` (e.g. a mounted Secret)")
    vlm_slots: int = count(
        4, "Requests each of the VLM's OpenAI-compatible servers answers at once (llama-server `-np`, vLLM "
        "`--max-num-seqs`); the node sends no more per server and process", unit="requests",
    )
    llm_backend: str = choice("ollama", "The API the LLM's server speaks", BACKENDS)
    llm_base_url: str = entries(
        "", "The LLM's servers, one or more: for `openai` each one's API root", http_url, shown="`OLLAMA_HOST`",
        accepted="http(s) URLs, comma-separated",
    )
    llm_api_key: str = secret("The API key of the LLM's server (`openai`), if it asks for one")
    llm_api_key_file: str = path("A file holding `LLM_API_KEY`")
    llm_slots: int = count(
        4, "Requests each of the LLM's OpenAI-compatible servers answers at once; the node sends no more per "
        "server and process",
        unit="requests",
    )
    vlm_max_images: int = count(
        0, "Images the VLM takes in one request; `0`: as its family is known to (moondream, llava: one)",
        unit="images", lo=0,
    )
    realtime_single_image: str = choice(
        "tile", "A batch for a VLM that takes fewer images: one contact sheet, or the newest frame", ("tile", "newest")
    )
    # Images and jobs.
    caption_max_tokens: int = count(
        256, "Longest caption a job asks for; the timeline must fit the LLM's context", unit="tokens"
    )
    image_max_side: int = count(1024, "Images are scaled down to this longest side", unit="pixels")
    image_max_pixels: int = count(
        4096 * 4096, "Largest image (width x height) a frame or a job's photo may be; larger ones are refused "
        "from their header (glasses send up to ~5 Mpx, phones 12 Mpx)", unit="pixels",
    )
    image_decode_slots: int = count(
        0, "Images one process decodes at once; `0`: one per core it may use", unit="images", lo=0
    )
    caption_slots: int = count(
        0, "Images captioned at once within a job; `0`: the slots of all the VLM's servers (`OLLAMA_NUM_PARALLEL` "
        "or `VLM_SLOTS` each)",
        unit="images", lo=0
    )
    job_max_images: int = count(1000, "Images one job may take", unit="images")
    workers: int = count(1, "Worker processes `make run` (`python -m server.node`) starts", unit="processes")
    worker_jobs: int = count(1, "Jobs one worker runs at once", unit="jobs")
    job_lease: float = seconds(30.0, "Time a worker's claim lasts without renewal")
    # A job's transient failures (Ollama or posemesh down, 5xx, timeouts, its
    # worker lost) are retried for JOB_RETRY_FOR from the first failure in a row
    # (a caption made, or a PUT retry, starts the count afresh).
    job_retry_for: float = seconds(900.0, "Time a job's transient failures in a row are retried for")
    job_retry_wait: float = seconds(
        2.0, "Wait before the first retry; doubles each time, less up to a tenth at random, up to `JOB_RETRY_MAX_WAIT`"
    )
    job_retry_max_wait: float = seconds(60.0, "Longest wait between two attempts")
    job_max_attempts: int = count(
        100, "Attempts a job gets at most, however they end (a cap beside `JOB_RETRY_FOR`)", unit="attempts"
    )
    watch_outage_limit: float = seconds(
        300.0, "Time a `WatchJob` or event stream that has sent its job rides out a database outage, "
        "then ends with UNAVAILABLE"
    )
    # Who may use the node.
    auth_tokens: str = _setting(
        "", "Bearer tokens the node accepts, comma-separated; none: open", _read_text, accepted="comma-separated"
    )
    auth_tokens_file: str = path("A file of tokens, one a line (e.g. a mounted Secret)")
    tls_cert_file: str = path("PEM certificate: with `TLS_KEY_FILE`, gRPC and the bridge serve TLS")
    tls_key_file: str = path("PEM key of `TLS_CERT_FILE`")
    grpc_ca_file: str = path("The bridge's trust for a TLS gRPC server", shown="`TLS_CERT_FILE`")
    # Health and metrics.
    metrics_port: int = port(9100, "The gRPC server process's `/metrics` and `/health`; `0`: any free port")
    worker_health_port: int = port(8081, "A worker's `/health` and `/metrics`; `0`: any free port")
    # The bridge's connections (server/bridge/connections.py).
    ws_ping_interval: float = seconds(10.0, "Time between the bridge's WebSocket pings, as the original")
    http_header_timeout: float = seconds(
        10.0, "Time the bridge waits for a request's head (from the connection's opening or its first byte) "
        "before closing the connection"
    )
    http_max_connections: int = count(
        1000, "Connections the bridge serves at once; a request past it gets 503", unit="connections"
    )
    allowed_origins: str = entries(
        DEFAULT_ALLOWED_ORIGINS, "Web pages (`scheme://host[:port]`, `:*` for any port, or `*`) whose scripts "
        "may call the bridge, besides its own origin", allowed_origin, shown="localhost pages",
    )
    # Webhooks.
    webhook_secret: str = secret("Signs webhook deliveries (HMAC-SHA256)")
    webhook_attempts: int = count(5, "Delivery attempts per webhook", unit="attempts")
    # Receivers the node may reach although they are not public addresses
    # (loopback, private, link-local, ...).
    webhook_allow_networks: str = entries(
        "", "CIDRs of non-public addresses a webhook may reach (e.g. `10.0.0.0/8`)", allowed_network
    )
    webhook_allow_hosts: str = entries(
        "", "Host names (`*.suffix` for all under one) a webhook may reach whatever their addresses", allowed_host
    )
    log_level: str = _setting(
        "INFO", "The least severe log lines written", _read_level,
        accepted="`DEBUG`, `INFO`, `WARNING` or `ERROR`", choices=LOG_LEVELS,
    )

    @property
    def caption_concurrency(self) -> int:
        """Captions a job asks for at once: CAPTION_SLOTS, or every slot of the VLM's servers."""
        vlm = self.role("VLM")
        return self.caption_slots or vlm.slots * len(vlm.urls)

    def role(self, name: "Role") -> "RoleSettings":
        """The settings of one role's engine, the VLM's or the LLM's."""
        vlm = name == "VLM"
        backend = self.vlm_backend if vlm else self.llm_backend
        base_urls = self.vlm_base_url if vlm else self.llm_base_url
        return RoleSettings(
            name=name,
            backend=backend,
            urls=tuple(http_url(u) for u in base_urls.split(",")) if base_urls else (self.ollama_host,),
            model=self.vlm_model if vlm else self.llm_model,
            api_key=self.vlm_api_key if vlm else self.llm_api_key,
            api_key_file=self.vlm_api_key_file if vlm else self.llm_api_key_file,
            slots=(self.vlm_slots if vlm else self.llm_slots) if backend == "openai" else self.ollama_num_parallel,
            num_ctx=self.vlm_num_ctx if vlm else self.llm_num_ctx,
        )

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)

    @property
    def bridge_target(self) -> str:
        """Where the bridge dials the gRPC server (GRPC_TARGET's default)."""
        return self.grpc_target or f"localhost:{self.grpc_port}"

    @property
    def bridge_ca_file(self) -> str:
        """What the bridge trusts of a TLS gRPC server (GRPC_CA_FILE's default); empty: plain gRPC."""
        return self.grpc_ca_file or (self.tls_cert_file if self.tls else "")

    @property
    def posemesh_configured(self) -> bool:
        return bool(self.api_url and self.dds_url and self.posemesh_email and self.posemesh_password)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The settings `env` (default: this process's environment) gives,
        each read as its field declares; unset or empty: the default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw:
                values[f.name] = spec(f).read(name, raw, spec(f))
        settings = cls(**values)
        for broken in broken_rules(settings):
            raise ConfigError(broken)
        return settings


# Rules that span settings: each says, in one line naming them, why a pair
# cannot work, or None.

def _tls_pair(s: Settings) -> str | None:
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        return "TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither"
    return None


def _default_batch_fits(s: Settings) -> str | None:
    if s.image_batch_size > s.realtime_max_batch:
        return (f"IMAGE_BATCH_SIZE ({s.image_batch_size}) must not be more than REALTIME_MAX_BATCH "
                f"({s.realtime_max_batch}): every stream that takes the default batch would be refused")
    return None


def _first_wait_fits(s: Settings) -> str | None:
    if s.job_retry_wait > s.job_retry_max_wait:
        return (f"JOB_RETRY_WAIT ({s.job_retry_wait:g}) must not be more than JOB_RETRY_MAX_WAIT "
                f"({s.job_retry_max_wait:g}), the longest wait between two attempts")
    return None


def _flush_before_idle(s: Settings) -> str | None:
    if s.realtime_flush_after >= s.realtime_idle_timeout:
        return (f"REALTIME_FLUSH_AFTER ({s.realtime_flush_after:g}) must be less than REALTIME_IDLE_TIMEOUT "
                f"({s.realtime_idle_timeout:g}): a stream would be closed before its queued frames are answered")
    return None


def _openai_needs_url(s: Settings) -> str | None:
    for role, backend, base_url in (("VLM", s.vlm_backend, s.vlm_base_url), ("LLM", s.llm_backend, s.llm_base_url)):
        if backend == "openai" and not base_url:
            return (f"{role}_BACKEND=openai needs {role}_BASE_URL, the server's API root "
                    "(e.g. http://vllm:8000/v1): OLLAMA_HOST speaks Ollama's API")
    return None


def _one_api_key(s: Settings) -> str | None:
    for role in map(s.role, ROLES):
        if role.api_key and role.api_key_file:
            return f"{role.name}_API_KEY and {role.name}_API_KEY_FILE both give the key: set one or neither"
    return None


RULES: tuple[Callable[[Settings], str | None], ...] = (
    _tls_pair, _default_batch_fits, _first_wait_fits, _flush_before_idle, _openai_needs_url, _one_api_key,
)


def broken_rules(settings: Settings) -> Iterator[str]:
    for rule in RULES:
        if (broken := rule(settings)) is not None:
            yield broken


def load(program: str, *, need_postgres: bool = False) -> Settings:
    """The settings of a process; a bad setting ends the process with one line."""
    try:
        settings = Settings.from_env()
        if need_postgres and not settings.postgres_url:
            raise ConfigError("POSTGRES_URL is required (or use `make run`, which starts a private PostgreSQL)")
    except ConfigError as exc:
        sys.exit(f"{program}: {exc}")
    return settings


# The README's Configuration table.

def _shown_default(f: Field) -> str:
    s = spec(f)
    if s.shown:
        return s.shown
    value = f.default
    if value == "":
        return "-"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def markdown_rows() -> list[str]:
    return [
        f"| `{f.name.upper()}` | {spec(f).doc} | {_shown_default(f)} | {spec(f).accepted or '-'} |"
        for f in fields(Settings)
    ]


MARKDOWN_HEAD = ["| Variable | Description | Default | Accepted |", "|----------|-------------|---------|----------|"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m server.config --markdown   (prints the README's Configuration table)")
    print("\n".join(MARKDOWN_HEAD + markdown_rows()))
