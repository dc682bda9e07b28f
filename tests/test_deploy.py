"""The deployment files pass scripts/check-deploy.sh (hadolint, docker-compose
config, helm lint and template, kubernetes-validate), and what they render
keeps the contract: the README's Helm install makes the posemesh Secret, the
probes ask the real endpoints, workers scale, and every variable is one the
node reads."""

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
TOOLS_MISSING = 3  # check-deploy.sh's exit status when it cannot install a tool
SETTINGS = {f.name.upper() for f in dataclasses.fields(Settings)}
COMPOSE_ONLY = {"COMPOSE_PROFILES", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_PORT"}

pytestmark = pytest.mark.timeout(900)  # a new machine first installs helm, docker-compose, kubernetes-validate


@dataclasses.dataclass
class Check:
    returncode: int
    output: str
    rendered: dict[str, list[dict]]


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> Check:
    out = tmp_path_factory.mktemp("rendered")
    env = {**os.environ, "PYTHON": sys.executable, "RENDER_DIR": str(out)}
    proc = subprocess.run(
        ["bash", "scripts/check-deploy.sh"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=850,
    )
    if proc.returncode == TOOLS_MISSING:
        message = "scripts/check-deploy.sh could not install its tools:\n" + proc.stdout[-2000:]
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    rendered = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return Check(proc.returncode, proc.stdout, rendered)


def render(check: Check, name: str) -> list[dict]:
    if check.returncode != 0:
        pytest.fail("scripts/check-deploy.sh failed (see test_check_deploy_passes)")
    return check.rendered[name]


def find(docs: list[dict], kind: str, suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def containers(deployment: dict) -> dict[str, dict]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_check_deploy_passes(check):
    assert check.returncode == 0, f"scripts/check-deploy.sh failed:\n{check.output}"
    assert "all deployment checks passed" in check.output


def test_readme_install_creates_the_posemesh_secret(check):
    docs = render(check, "helm-seed")
    secret = find(docs, "Secret", "-posemesh")
    assert base64.b64decode(secret["data"]["POSEMESH_EMAIL"]).decode() == "a@b.c"
    assert base64.b64decode(secret["data"]["POSEMESH_PASSWORD"]).decode() == "x"
    for name in ("-server", "-worker"):
        deployment = find(docs, "Deployment", name)
        node = containers(deployment)["server" if name == "-server" else "worker"]
        refs = secret_refs(node)
        assert refs["POSEMESH_EMAIL"] == (secret["metadata"]["name"], "POSEMESH_EMAIL")
        assert refs["POSEMESH_PASSWORD"] == (secret["metadata"]["name"], "POSEMESH_PASSWORD")
    # postgresql.enabled=true: the chart's own database, its password in a Secret.
    find(docs, "StatefulSet", "-postgresql")
    config = find(docs, "ConfigMap")["data"]
    assert config["POSTGRES_URL"].startswith("postgresql://vlmnode@")


def test_probes_ask_the_real_endpoints(check):
    pod = find(render(check, "helm-default"), "Deployment", "-server")
    cs = containers(pod)
    bridge, server = cs["bridge"], cs["server"]
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in bridge["ports"]} == {"http": 8080}
    assert {"name": "GRPC_TARGET", "value": "localhost:50051"} in bridge["env"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["grpc"]["port"] == 50051
    assert server["readinessProbe"]["grpc"]["service"] == "vlmnode.v1.JobService"
    for c in cs.values():
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_workers_scale(check):
    for name in ("helm-default", "helm-seed", "helm-full", "helm-external"):
        worker = find(render(check, name), "Deployment", "-worker")
        for c in containers(worker).values():
            assert "ports" not in c, f"{name}: the worker must not take a port"
            assert not any("hostPort" in p for p in c.get("ports", []))
    full = render(check, "helm-full")
    assert "replicas" not in find(full, "Deployment", "-worker")["spec"], "the HPA owns replicas"
    hpa = find(full, "HorizontalPodAutoscaler", "-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"].endswith("-worker")
    ollama = containers(find(full, "Deployment", "-ollama"))["ollama"]
    assert ollama["resources"]["limits"]["nvidia.com/gpu"] == 1
    ingress = find(full, "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"] == 8080

    compose = render(check, "compose")[0]["services"]
    worker = compose["worker"]
    assert "container_name" not in worker and "ports" not in worker, "`--scale worker=N` needs neither"
    assert worker["environment"]["POSTGRES_URL"].startswith("postgresql://")
    bridge_ports = {(int(p["published"]), p["target"]) for p in compose["bridge"]["ports"]}
    assert bridge_ports == {(8080, 8080), (3000, 8080)}, "REST on 8080, the console on 3000"
    gpu = compose["ollama-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_external_database_and_secrets(check):
    docs = render(check, "helm-external")
    assert not [d for d in docs if d["kind"] == "StatefulSet"], "no in-chart PostgreSQL"
    assert not [d for d in docs if d["metadata"]["name"].endswith("-ollama")], "no in-chart Ollama"
    url_secret = find(docs, "Secret", "-database")
    assert base64.b64decode(url_secret["data"]["POSTGRES_URL"]).decode().startswith("postgresql://vlm:pw@")
    worker = containers(find(docs, "Deployment", "-worker"))["worker"]
    refs = secret_refs(worker)
    assert refs["POSTGRES_URL"] == (url_secret["metadata"]["name"], "POSTGRES_URL")
    assert refs["POSEMESH_EMAIL"] == ("vlm-node-posemesh", "POSEMESH_EMAIL")
    assert find(docs, "ConfigMap")["data"]["OLLAMA_HOST"] == "http://ollama.example.com:11434"


def test_every_variable_is_one_the_node_reads(check):
    for name in ("helm-default", "helm-full", "helm-external"):
        config = find(render(check, name), "ConfigMap")["data"]
        assert set(config) <= SETTINGS, f"{name}: unknown variables {set(config) - SETTINGS}"
    for service in ("server", "bridge", "worker"):
        env = set(render(check, "compose")[0]["services"][service]["environment"])
        unknown = env - SETTINGS - COMPOSE_ONLY
        assert not unknown, f"compose {service}: unknown variables {unknown}"
