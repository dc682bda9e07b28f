"""Settings: the seed's variables with their defaults, and one clear line for
a bad one."""

import subprocess
import sys

import pytest

from server.config import ConfigError, Settings


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
