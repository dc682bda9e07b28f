"""Settings: the seed's variables with their defaults, and one clear line for
a bad one."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.config import MARKDOWN_HEAD, ConfigError, Settings, broken_rules, markdown_rows, spec

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_follow_the_original_readme():
    s = Settings.from_env({})
    assert (s.vlm_model, s.llm_model, s.ollama_host) == ("moondream:1.8b", "llama3:latest", "http://localhost:11434")
    assert (s.client_id, s.image_batch_size, s.http_port) == ("vlm-node", 5, 8080)


def test_values_are_parsed():
    s = Settings.from_env({"IMAGE_BATCH_SIZE": "3", "OLLAMA_HOST": "http://gpu:11434/", "OLLAMA_PULL": "no",
                           "JOB_LEASE": "2.5", "LOG_LEVEL": "debug"})
    assert (s.image_batch_size, s.ollama_host, s.ollama_pull, s.job_lease, s.log_level) == (
        3, "http://gpu:11434", False, 2.5, "DEBUG")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"IMAGE_BATCH_SIZE": "five"}, "IMAGE_BATCH_SIZE must be an integer"),
        ({"IMAGE_BATCH_SIZE": "0"}, "IMAGE_BATCH_SIZE must be between"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT must be between 0 and 65535"),
        ({"OLLAMA_HOST": "localhost:11434"}, "OLLAMA_HOST must be an http(s) URL"),
        ({"POSTGRES_URL": "mysql://x"}, "POSTGRES_URL must be a postgresql:// URL"),
        ({"JOB_LEASE": "-1"}, "JOB_LEASE must be between"),
        ({"OLLAMA_PULL": "maybe"}, "OLLAMA_PULL must be true or false"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


@pytest.mark.parametrize("module", ["server.main", "worker.main", "server.bridge.main", "server.node"])
def test_a_process_with_a_bad_setting_stops_with_one_line(module):
    result = subprocess.run(
        [sys.executable, "-m", module], env={"PATH": "/usr/bin:/bin", "IMAGE_BATCH_SIZE": "many"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("vlm-node") and line.endswith(": IMAGE_BATCH_SIZE must be an integer, got 'many'")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ALLOWED_ORIGINS": "https://ok.example.com, dash.example.com"},
         "ALLOWED_ORIGINS: 'dash.example.com' is not an origin"),
        ({"ALLOWED_ORIGINS": "https://dash.example.com/app"}, "ALLOWED_ORIGINS: 'https://dash.example.com/app' is not"),
        ({"WEBHOOK_ALLOW_NETWORKS": "10.0.0.0/8,10.0.0.0/99"}, "WEBHOOK_ALLOW_NETWORKS: '10.0.0.0/99' is not an IP"),
        ({"WEBHOOK_ALLOW_HOSTS": "hooks internal"}, "WEBHOOK_ALLOW_HOSTS: 'hooks internal' is not a host name"),
        ({"REALTIME_SINGLE_IMAGE": "grid"}, "REALTIME_SINGLE_IMAGE must be one of tile, newest, got 'grid'"),
        ({"TLS_CERT_FILE": "/no/such/cert.pem", "TLS_KEY_FILE": "/no/such/key.pem"},
         "TLS_CERT_FILE '/no/such/cert.pem' is not a file"),
    ],
)
def test_bad_entries_name_the_variable(env, message):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert str(refused.value).startswith(message)


def test_lists_are_read_by_what_checked_them():
    from server.bridge.auth import Origins
    from server.destinations import Destinations

    s = Settings.from_env({"ALLOWED_ORIGINS": " https://Dash.example.com , http://[::1]:*,",
                           "WEBHOOK_ALLOW_HOSTS": "hooks.internal, *.svc.cluster.local",
                           "WEBHOOK_ALLOW_NETWORKS": "10.0.0.0/8,,fd00::/8"})
    assert s.allowed_origins == "https://Dash.example.com,http://[::1]:*"
    origins = Origins.from_settings(s)
    assert origins.allows("https://dash.example.com") and origins.allows("http://[::1]:5173")
    assert not origins.allows("https://evil.example.com") and not origins.any
    destinations = Destinations.from_settings(s)
    assert destinations.host_allowed("hooks.internal") and destinations.host_allowed("a.svc.cluster.local")
    assert [str(n) for n in destinations.networks] == ["10.0.0.0/8", "fd00::/8"]
    assert Origins.from_settings(Settings.from_env({"ALLOWED_ORIGINS": "*"})).any


# Rules that span settings: a pair that cannot work stops the process at start.

@pytest.mark.parametrize(
    "env, message",
    [
        ({"IMAGE_BATCH_SIZE": "20", "REALTIME_MAX_BATCH": "16"},
         "IMAGE_BATCH_SIZE (20) must not be more than REALTIME_MAX_BATCH (16): every stream that takes the default "
         "batch would be refused"),
        ({"REALTIME_MAX_BATCH": "4"}, "IMAGE_BATCH_SIZE (5) must not be more than REALTIME_MAX_BATCH (4)"),
        ({"JOB_RETRY_WAIT": "90"}, "JOB_RETRY_WAIT (90) must not be more than JOB_RETRY_MAX_WAIT (60)"),
        ({"REALTIME_IDLE_TIMEOUT": "2"}, "REALTIME_FLUSH_AFTER (2) must be less than REALTIME_IDLE_TIMEOUT (2)"),
        ({"TLS_CERT_FILE": __file__}, "TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither"),
        ({"TLS_KEY_FILE": __file__}, "TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither"),
        ({"VLM_BACKEND": "openai"}, "VLM_BACKEND=openai needs VLM_BASE_URL, the server's API root"),
        ({"LLM_BACKEND": "openai", "OLLAMA_HOST": "http://gpu:8000/v1"}, "LLM_BACKEND=openai needs LLM_BASE_URL"),
        ({"LLM_API_KEY": "sk-1", "LLM_API_KEY_FILE": __file__},
         "LLM_API_KEY and LLM_API_KEY_FILE both give the key: set one or neither"),
    ],
)
def test_settings_that_cannot_work_together_are_refused(env, message):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert str(refused.value).startswith(message)


def test_settings_that_fit_together_pass():
    s = Settings.from_env({"IMAGE_BATCH_SIZE": "16", "REALTIME_MAX_BATCH": "16", "JOB_RETRY_WAIT": "60",
                           "REALTIME_FLUSH_AFTER": "0.5", "REALTIME_IDLE_TIMEOUT": "0.6",
                           "TLS_CERT_FILE": __file__, "TLS_KEY_FILE": __file__})
    assert (s.image_batch_size, s.job_retry_wait, s.realtime_idle_timeout, s.tls) == (16, 60.0, 0.6, True)


def test_each_role_has_its_own_engine_settings_and_ollama_is_the_default():
    s = Settings.from_env({})
    vlm, llm = s.role("VLM"), s.role("LLM")
    assert (vlm.backend, llm.backend, vlm.urls, llm.urls) == ("ollama", "ollama", (s.ollama_host,), (s.ollama_host,))
    assert (vlm.model, llm.model, vlm.num_ctx, llm.num_ctx) == (s.vlm_model, s.llm_model, s.vlm_num_ctx, s.llm_num_ctx)
    assert s.caption_concurrency == vlm.slots == s.ollama_num_parallel == 1
    s = Settings.from_env({"VLM_BACKEND": "openai", "VLM_BASE_URL": "http://vllm:8000/v1/", "VLM_SLOTS": "16",
                           "LLM_BASE_URL": "http://other-ollama:11434", "LLM_API_KEY": "sk-1"})
    vlm, llm = s.role("VLM"), s.role("LLM")
    assert (vlm.backend, vlm.urls, vlm.slots, llm.backend, llm.urls, llm.api_key) == (
        "openai", ("http://vllm:8000/v1",), 16, "ollama", ("http://other-ollama:11434",), "sk-1")
    assert s.caption_concurrency == 16  # a job's captions fill the VLM's slots
    with pytest.raises(ConfigError, match="VLM_BACKEND must be one of ollama, openai, got 'vllm'"):
        Settings.from_env({"VLM_BACKEND": "vllm"})


def test_a_role_may_list_many_servers_and_a_job_fills_the_slots_of_all():
    s = Settings.from_env({"VLM_BACKEND": "openai", "VLM_SLOTS": "8",
                           "VLM_BASE_URL": " http://vllm-0:8000/v1, http://vllm-1:8000/v1/ ,,http://vllm-2:8000/v1"})
    assert s.role("VLM").urls == ("http://vllm-0:8000/v1", "http://vllm-1:8000/v1", "http://vllm-2:8000/v1")
    assert s.caption_concurrency == 24
    assert Settings.from_env({"LLM_BASE_URL": "http://a:11434,http://b:11434"}).role("LLM").urls == (
        "http://a:11434", "http://b:11434")
    with pytest.raises(ConfigError, match="VLM_BASE_URL: an http\\(s\\) URL, got 'vllm-1:8000'"):
        Settings.from_env({"VLM_BASE_URL": "http://vllm-0:8000/v1,vllm-1:8000"})


@pytest.mark.parametrize("module", ["server.main", "worker.main", "server.bridge.main", "server.node"])
def test_a_process_whose_default_batch_is_over_the_limit_does_not_start(module):
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={"PATH": "/usr/bin:/bin", "IMAGE_BATCH_SIZE": "20", "REALTIME_MAX_BATCH": "16"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("vlm-node") and ": IMAGE_BATCH_SIZE (20) must not be more than REALTIME_MAX_BATCH" in line


# The declarations: one per setting, and what repeats them agrees.

def shown(value) -> str:
    """A value as an environment variable says it."""
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def test_each_default_is_one_its_own_declaration_accepts():
    defaults = Settings()
    assert not list(broken_rules(defaults))
    for f in dataclasses.fields(Settings):
        s = spec(f)
        assert s.doc and "|" not in s.doc and "\n" not in s.doc, f"{f.name}: one line of the README's table"
        if f.default != "" and s.read.__name__ != "_read_path":
            name = f.name.upper()
            assert Settings.from_env({name: shown(f.default)}) == defaults, name


def test_the_readme_table_is_the_declarations():
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index(MARKDOWN_HEAD[0])
    table = readme[start + len(MARKDOWN_HEAD):]
    table = table[:table.index("")]
    for want, have in zip(markdown_rows(), table, strict=False):
        assert have == want, f"README's row differs; run `python -m server.config --markdown`:\n{have}\n{want}"
    assert len(table) == len(markdown_rows()), "README's table has a row too many or too few"


DEPLOYMENTS_OWN = {"API_URL", "DDS_URL", "POSTGRES_URL", "OLLAMA_HOST", "GRPC_TARGET"}  # set on purpose


def stated_defaults() -> list[tuple[str, str, str]]:
    """(where, NAME, value) for each node setting a deployment file states a value of."""
    names = {f.name.upper() for f in dataclasses.fields(Settings)} - DEPLOYMENTS_OWN
    stated = []
    compose = (ROOT / "docker-compose.yml").read_text()
    for pattern in (r"\$\{(\w+):-([^}]*)\}", r"environ\.get\('(\w+)', '([^']*)'\)"):
        stated += [("docker-compose.yml", n, v) for n, v in re.findall(pattern, compose) if n in names]
    for line in (ROOT / ".env").read_text().splitlines():
        n, eq, v = line.partition("=")
        if eq and n in names:
            stated.append((".env", n, v))
    values = yaml.safe_load((ROOT / "charts/vlm-node/values.yaml").read_text())
    stated += [("values.yaml env", n, str(v)) for n, v in values["env"].items() if n in names]
    for role, engine in values["engines"].items():  # each value the chart sets a role's setting from
        for value, name in (("backend", "BACKEND"), ("model", "MODEL"), ("slots", "SLOTS"), ("maxImages", "MAX_IMAGES")):
            if engine.get(value) is not None:
                stated.append((f"values.yaml engines.{role}.{value}", f"{role.upper()}_{name}", str(engine[value])))
    return stated


def test_deployment_files_repeat_only_the_node_defaults():
    stated = stated_defaults()
    assert {n for _, n, _ in stated} >= {"VLM_MODEL", "LLM_MODEL", "METRICS_PORT", "HTTP_PORT", "OLLAMA_NUM_PARALLEL",
                                         "VLM_BACKEND", "LLM_BACKEND"}
    assert ("values.yaml engines.vlm.model", "VLM_MODEL", Settings.vlm_model) in stated
    defaults = Settings()
    for where, name, value in stated:
        assert Settings.from_env({name: value}) == defaults, f"{where}: {name}={value} is not the node's default"
