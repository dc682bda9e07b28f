"""The deployment files pass scripts/check-deploy.sh (hadolint, docker-compose
config, helm lint and template, kubernetes-validate), and what they render
keeps the contract: the README's Helm install makes the posemesh Secret, the
probes ask the real endpoints (also with TLS on), workers scale (on the jobs
wanting a worker, counted as the node counts them) and answer /health,
bearer tokens come from a mounted Secret, metrics are scrapeable, each role's
model server is where the values say (vLLM in Compose, external servers and
several Ollama replicas in the chart), and every variable is one the node
reads."""

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from server.config import Settings
from server.job_status import HELD, Status

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


def env_values(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def mounts(container: dict) -> dict[str, str]:
    """volume name -> mount path"""
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def volumes(deployment: dict) -> dict[str, dict]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return {p["name"]: p["containerPort"] for p in container["ports"]}[port]


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
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"grpc": 50051, "metrics": 9100}
    assert {"name": "GRPC_TARGET", "value": "localhost:50051"} in bridge["env"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["grpc"]["port"] == 50051
    assert server["readinessProbe"]["grpc"]["service"] == "vlmnode.v1.JobService"
    # Auth and TLS are off by default: no token file, no certificate.
    for c in cs.values():
        assert not {"AUTH_TOKENS_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"} & set(env_values(c))
    for c in cs.values():
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_workers_scale(check):
    for name in ("helm-default", "helm-seed", "helm-full", "helm-external", "helm-secure"):
        worker = find(render(check, name), "Deployment", "-worker")
        for c in containers(worker).values():
            assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("metrics", 8081)], name
            assert not any("hostPort" in p for p in c["ports"]), f"{name}: a worker takes no host port, so it scales"
    full = render(check, "helm-full")
    assert "replicas" not in find(full, "Deployment", "-worker")["spec"], "the autoscaler owns replicas"
    scaler = find(full, "ScaledObject", "-worker")
    assert scaler["spec"]["scaleTargetRef"]["name"].endswith("-worker")
    ollama = containers(find(full, "Deployment", "-ollama"))["ollama"]
    assert ollama["resources"]["limits"]["nvidia.com/gpu"] == 1
    ingress = find(full, "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"] == 8080

    compose = render(check, "compose")[0]["services"]
    worker = compose["worker"]
    assert "container_name" not in worker and "ports" not in worker, "`--scale worker=N` needs neither"
    assert worker["expose"] == ["8081"], "the health port, inside the Compose network only"
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
    for name in ("helm-default", "helm-full", "helm-external", "helm-auth-created", "helm-secure",
                 "helm-engines-openai-vlm", "helm-ollama-replicas", "helm-engines-external"):
        docs = render(check, name)
        config = find(docs, "ConfigMap")["data"]
        assert set(config) <= SETTINGS, f"{name}: unknown variables {set(config) - SETTINGS}"
        for deployment in (find(docs, "Deployment", "-server"), find(docs, "Deployment", "-worker")):
            for c in containers(deployment).values():
                unknown = {e["name"] for e in c.get("env", [])} - SETTINGS - {"PGPASSWORD"}
                assert not unknown, f"{name} {c['name']}: unknown variables {unknown}"
    for service in ("server", "bridge", "worker", "vllm"):
        env = set(render(check, "compose")[0]["services"][service]["environment"])
        unknown = env - SETTINGS - COMPOSE_ONLY
        assert not unknown, f"compose {service}: unknown variables {unknown}"


def test_worker_probes_ask_health_on_its_port(check):
    for name in ("helm-default", "helm-secure"):
        worker = containers(find(render(check, name), "Deployment", "-worker"))["worker"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = worker[probe]["httpGet"]
            assert get["path"] == "/health" and port_number(worker, get["port"]) == 8081, (name, probe, get)
            assert get.get("scheme", "HTTP") == "HTTP", "the health port is plain HTTP, also with TLS on"
        assert worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 600, \
            "the first start may pull the models before /health answers"
        assert find(render(check, name), "ConfigMap")["data"]["WORKER_HEALTH_PORT"] == "8081"


def test_tokens_come_from_a_mounted_secret(check):
    for name, secret_name in (("helm-auth-created", "vlm-node-auth"), ("helm-secure", "vlm-node-tokens")):
        docs = render(check, name)
        pod = find(docs, "Deployment", "-server")
        volume = volumes(pod)["auth-tokens"]["secret"]
        assert volume["secretName"] == secret_name
        assert volume["items"] == [{"key": "tokens", "path": "tokens"}]
        for c in ("server", "bridge"):
            container = containers(pod)[c]
            path = env_values(container)["AUTH_TOKENS_FILE"]
            assert path == mounts(container)["auth-tokens"] + "/tokens", (name, c)
        worker = containers(find(docs, "Deployment", "-worker"))["worker"]
        assert "AUTH_TOKENS_FILE" not in env_values(worker) and "auth-tokens" not in mounts(worker)
        assert "auth-tokens" not in volumes(find(docs, "Deployment", "-worker"))
        assert not {"AUTH_TOKENS", "AUTH_TOKENS_FILE"} & set(find(docs, "ConfigMap")["data"]), "no token in the ConfigMap"

    created = render(check, "helm-auth-created")
    secret = find(created, "Secret", "-auth")
    assert base64.b64decode(secret["data"]["tokens"]).decode().splitlines() == ["t0k-one", "t0k-two"]
    annotations = find(created, "Deployment", "-server")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/auth" in annotations, "the server pod restarts when the tokens change"
    assert not [d for d in render(check, "helm-secure") if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-auth")], \
        "an existing Secret is used, not created"
    assert not [d for d in render(check, "helm-default") if d["metadata"]["name"].endswith("-auth")]


def test_tls_certificate_and_probes(check):
    docs = render(check, "helm-secure")
    pod = find(docs, "Deployment", "-server")
    assert volumes(pod)["tls"]["secret"]["secretName"] == "vlm-node-tls"
    cs = containers(pod)
    for c in ("server", "bridge"):
        env, where = env_values(cs[c]), mounts(cs[c])["tls"]
        assert env["TLS_CERT_FILE"] == f"{where}/tls.crt" and env["TLS_KEY_FILE"] == f"{where}/tls.key", c
    bridge, server = cs["bridge"], cs["server"]
    assert env_values(bridge)["GRPC_CA_FILE"] == mounts(bridge)["tls"] + "/ca.crt"  # tls.caKey=ca.crt
    assert env_values(bridge)["GRPC_TARGET"] == "localhost:50051"
    # The bridge serves HTTPS: its probes say so.
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTPS"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTPS"}
    # Kubernetes' gRPC probes cannot speak TLS: the server is probed on its plain-HTTP /health instead.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in server[probe], probe
    for probe in ("startupProbe", "readinessProbe"):
        get = server[probe]["httpGet"]
        assert get["path"] == "/health" and port_number(server, get["port"]) == 9100 and get.get("scheme", "HTTP") == "HTTP"
    assert port_number(server, server["livenessProbe"]["tcpSocket"]["port"]) == 50051
    worker = containers(find(docs, "Deployment", "-worker"))["worker"]
    assert "tls" not in mounts(worker) and "TLS_CERT_FILE" not in env_values(worker)
    grpc = {p["name"]: p for p in find(docs, "Service", "vlm-node")["spec"]["ports"]}["grpc"]
    assert grpc.get("appProtocol") != "kubernetes.io/h2c", "gRPC is no longer cleartext HTTP/2"


def test_metrics_are_scrapeable(check):
    default = render(check, "helm-default")
    for suffix, port in (("-server", "9100"), ("-worker", "8081")):
        annotations = find(default, "Deployment", suffix)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port, suffix
        assert annotations["prometheus.io/path"] == "/metrics"
    assert find(default, "ConfigMap")["data"]["METRICS_PORT"] == "9100"
    assert not [d for d in default if d["kind"] == "ServiceMonitor"], "off by default: it needs the Operator's CRDs"

    docs = render(check, "helm-secure")
    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [d for d in docs if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()]
    assert sorted(d["metadata"]["name"] for d in selected) == ["vlm-node-metrics", "vlm-node-worker-metrics"], \
        "only the metrics Services, so nothing is scraped twice"
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert set(endpoints) == {"metrics", "bridge-metrics"}
    assert all(e["path"] == "/metrics" for e in endpoints.values())
    assert endpoints["bridge-metrics"]["scheme"] == "https", "TLS is on: the bridge's /metrics is HTTPS"
    assert endpoints["metrics"].get("scheme", "http") == "http"
    pods = {"server": find(docs, "Deployment", "-server"), "worker": find(docs, "Deployment", "-worker")}
    for service in selected:
        component = service["spec"]["selector"]["app.kubernetes.io/component"]
        pod_containers = containers(pods[component]).values()
        named = {p["name"]: p["containerPort"] for c in pod_containers for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, (service["metadata"]["name"], port)
        assert service["spec"]["clusterIP"] == "None"
    server_ports = {p["name"]: p["targetPort"] for p in find(docs, "Service", "node-metrics")["spec"]["ports"]}
    assert server_ports == {"metrics": "metrics", "bridge-metrics": "http"}
    # The main Service (maybe a LoadBalancer) does not publish the metrics ports.
    assert {p["name"] for p in find(docs, "Service", "vlm-node")["spec"]["ports"]} == {"http", "grpc"}


def test_notes_say_when_the_node_is_open():
    notes = (ROOT / "charts" / "vlm-node" / "templates" / "NOTES.txt").read_text()
    assert "{{- if .Values.auth.enabled }}" in notes
    assert "WARNING: authentication is off" in notes


def test_compose_passes_tokens_and_tls_to_the_api_only(check):
    plain = render(check, "compose")[0]
    with_secrets = render(check, "compose-secrets")[0]
    assert {s["file"] for s in plain["secrets"].values()} == {"/dev/null"}, "unset: nothing is read"
    assert {Path(s["file"]).name for s in with_secrets["secrets"].values()} == {"tokens", "tls.crt", "tls.key"}
    for compose in (plain, with_secrets):
        services = compose["services"]
        for name in ("server", "bridge"):
            assert {s["source"] for s in services[name]["secrets"]} == {"auth_tokens", "tls_cert", "tls_key"}, name
        worker = services["worker"]
        assert "secrets" not in worker
        for name in ("AUTH_TOKENS_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE", "GRPC_CA_FILE"):
            assert worker["environment"][name] == "", f"a worker must not be told of {name}"
        assert services["server"]["expose"] == ["9100"] and "9100" not in str(services["server"].get("ports"))
        for name in ("server", "bridge", "worker"):
            test = " ".join(services[name]["healthcheck"]["test"])
            assert "/health" in test, name
        assert "METRICS_PORT" in " ".join(services["server"]["healthcheck"]["test"])
        assert "WORKER_HEALTH_PORT" in " ".join(services["worker"]["healthcheck"]["test"])
        assert "https" in " ".join(services["bridge"]["healthcheck"]["test"])


def test_ollama_and_the_node_agree_on_its_slots(check):
    """Ollama answers OLLAMA_NUM_PARALLEL requests per model; the node must send no more."""
    for name, kind in (("helm-default", "Deployment"), ("helm-full", "Deployment"), ("helm-ollama-replicas", "StatefulSet")):
        docs = render(check, name)
        ollama = containers(find(docs, kind, "-ollama"))["ollama"]
        assert ollama["image"].endswith(":0.32.15"), "the release the fakes are modelled on"
        assert env_values(ollama)["OLLAMA_NUM_PARALLEL"] == find(docs, "ConfigMap")["data"]["OLLAMA_NUM_PARALLEL"]
    compose = render(check, "compose")[0]["services"]
    dotenv = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if "=" in line
                  and not line.startswith("#"))
    for service in ("ollama", "ollama-gpu"):
        assert compose[service]["environment"]["OLLAMA_NUM_PARALLEL"] == dotenv["OLLAMA_NUM_PARALLEL"]
        assert compose[service]["image"] == "ollama/ollama:0.32.15"
    for service in ("server", "worker"):  # the node's processes read it from .env
        assert compose[service]["environment"]["OLLAMA_NUM_PARALLEL"] == dotenv["OLLAMA_NUM_PARALLEL"]


def scaled(check: Check, name: str) -> tuple[dict, dict]:
    """The worker's ScaledObject and the TriggerAuthentication its trigger names."""
    docs = render(check, name)
    scaler = find(docs, "ScaledObject", "-worker")
    [trigger] = scaler["spec"]["triggers"]
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    return scaler, auth


def test_workers_scale_on_the_queue_not_on_cpu(check):
    assert not [d for d in render(check, "helm-default") if "autoscaling" in d["apiVersion"] or d["apiVersion"].startswith("keda.sh/")], \
        "off by default: worker.replicas workers"
    for name in ("helm-full", "helm-secure", "helm-autoscale-keda", "helm-autoscale-prometheus"):
        for doc in render(check, name):
            assert "cpu" not in json.dumps(doc.get("spec", {}).get("metrics", [])), f"{name}: CPU says nothing of a worker's work"

    # keda (the default mode), the chart's PostgreSQL: the trigger names its Service and user, the password from its Secret.
    scaler, auth = scaled(check, "helm-full")
    spec = scaler["spec"]
    assert scaler["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vlm-node-worker"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 5)
    assert spec["cooldownPeriod"] == 300
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    [trigger] = spec["triggers"]
    assert trigger["type"] == "postgresql"
    meta = trigger["metadata"]
    assert meta["targetQueryValue"] == str(Settings().worker_jobs), "unset: as many jobs as one worker runs by default"
    assert meta["activationTargetQueryValue"] == "0"
    assert meta["host"] == "vlm-node-postgresql.vlm.svc", "the KEDA operator runs in another namespace"
    assert (meta["port"], meta["userName"], meta["dbName"]) == ("5432", "vlmnode", "vlmnode")
    assert "password" not in meta and "connection" not in meta
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "vlm-node-postgresql", "key": "POSTGRES_PASSWORD"}]
    assert not [d for d in render(check, "helm-full") if d["kind"] == "HorizontalPodAutoscaler"], "KEDA makes its own"

    # keda, an external database from your Secret, scaling to zero, WORKER_JOBS jobs a worker.
    scaler, auth = scaled(check, "helm-autoscale-keda")
    spec, meta = scaler["spec"], scaler["spec"]["triggers"][0]["metadata"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 20)
    assert (meta["targetQueryValue"], meta["activationTargetQueryValue"]) == ("2", "1")
    assert not {"host", "userName", "password"} & set(meta)
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "connection", "name": "vlm-node-db", "key": "url"}]
    assert "replicas" not in find(render(check, "helm-autoscale-keda"), "Deployment", "-worker")["spec"]
    for name in ("helm-full", "helm-autoscale-keda"):
        assert find(render(check, name), "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"] == meta["query"]

    # prometheus: an HPA on the adapter's external metric, jobsPerReplica jobs a worker.
    docs = render(check, "helm-autoscale-prometheus")
    assert not [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    hpa = find(docs, "HorizontalPodAutoscaler", "-worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "vlm-node-worker"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {"name": "vlmnode_worker_demand", "selector": {"matchLabels": {"service": "vlm-node-metrics"}}}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "3"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "replicas" not in find(docs, "Deployment", "-worker")["spec"]

    readme = (ROOT / "README.md").read_text()
    assert "as: vlmnode_worker_demand}" in readme, "the README gives the adapter rule serving the HPA's metric"


async def test_the_chart_counts_the_jobs_the_node_counts(check, store, database_url):
    """KEDA's query counts the due pending jobs (the node's vlmnode_queue_depth)
    plus the jobs workers hold, on a database migrated by the node."""
    query = find(render(check, "helm-full"), "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    rows = [(status, "now() - interval '1 minute'") for status in Status]
    rows += [(Status.PENDING, "now() + interval '1 hour'"), (Status.PENDING, "now()"), (Status.RUNNING, "now()")]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for status, run_after in rows:
            conn.execute(f"INSERT INTO jobs (job_type, status, run_after) VALUES ('task_timing_v1', %s, {run_after})", [str(status)])
        [(counted,)] = conn.execute(query).fetchall()
    due, _ = await store.queue_stats()
    by_status = await store.count_by_status()
    held = sum(by_status.get(status, 0) for status in HELD)
    assert (due, held) == (2, 5), "the rows above: due pending, and held"
    assert counted == due + held


def run_compose_script(service: dict, env: dict[str, str], tmp_path: Path, fake: str) -> subprocess.CompletedProcess:
    """A Compose service's `sh -c` command, run here with `fake` (a program
    that prints its arguments one a line) on PATH in place of the image's."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    (tmp_path / fake).write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (tmp_path / fake).chmod(0o755)
    script = service["command"][0].replace("$$", "$")  # Compose's escape, as `config` prints it
    return subprocess.run(["/bin/sh", "-c", script], env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


VLLM_LINES = {  # .env's lines for .env.local
    "VLM_BACKEND": "openai", "VLM_BASE_URL": "http://vllm:8000/v1", "VLM_MODEL": "Qwen/Qwen2.5-VL-3B-Instruct",
    "VLM_SLOTS": "16", "VLM_MAX_IMAGES": "4", "VLM_NUM_CTX": "8192",
}


def test_env_names_the_lines_the_vllm_profile_needs():
    commented = dict(line.lstrip("# ").split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
                     if line.startswith("#   VLM_"))
    assert commented == VLLM_LINES
    settings = Settings.from_env(commented)  # lines the node takes
    assert (settings.vlm_backend, settings.caption_concurrency) == ("openai", 16)


def test_compose_vllm_profile_starts_vllm_from_the_node_settings(check, tmp_path):
    services = render(check, "compose")[0]["services"]
    vllm = services["vllm"]
    assert vllm["profiles"] == ["vllm"]
    assert vllm["image"] == "vllm/vllm-openai:v0.10.1.1"
    assert vllm["deploy"] == services["ollama-gpu"]["deploy"], "the GPU reserved as for the gpu profile"
    assert "/root/.cache/huggingface" in " ".join(vllm["volumes"])
    assert "http://127.0.0.1:8000/health" in " ".join(vllm["healthcheck"]["test"])
    assert vllm["environment"]["VLM_MODEL"] == services["server"]["environment"]["VLM_MODEL"], \
        "vLLM reads the node's own files (.env, .env.local)"

    args = run_compose_script(vllm, {**VLLM_LINES, "VLM_BASE_URL": "http://gpu2:8000/v1,http://vllm:8000/v1"},
                              tmp_path, "vllm")
    assert args.returncode == 0, args.stderr
    argv = args.stdout.splitlines()
    flag = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert argv[:2] == ["serve", VLLM_LINES["VLM_MODEL"]], "served under the name the node asks for"
    assert flag["--max-num-seqs"] == VLLM_LINES["VLM_SLOTS"], "the node sends no more than vLLM runs at once"
    assert json.loads(flag["--limit-mm-per-prompt"]) == {"image": int(VLLM_LINES["VLM_MAX_IMAGES"])}
    assert flag["--max-model-len"] == VLLM_LINES["VLM_NUM_CTX"]
    assert "--api-key" not in flag
    keyed = run_compose_script(vllm, {**VLLM_LINES, "VLM_API_KEY": "sk-1"}, tmp_path, "vllm")
    assert {"--api-key", "sk-1"} <= set(keyed.stdout.splitlines()), "the key the node sends is the one vLLM wants"

    # Without the node pointed at it (or with an Ollama tag for a model), vLLM does not start, and says why.
    for env in ({}, {**VLLM_LINES, "VLM_MODEL": "moondream:1.8b"}, {**VLLM_LINES, "VLM_MAX_IMAGES": "0"},
                {k: v for k, v in VLLM_LINES.items() if k != "VLM_SLOTS"}):
        refused = run_compose_script(vllm, env, tmp_path, "vllm")
        assert refused.returncode == 1 and not refused.stdout, env
        assert "put in .env.local (see .env): VLM_BACKEND=openai" in refused.stderr


def test_compose_pulls_only_the_models_ollama_serves(check, tmp_path):
    pull = render(check, "compose")[0]["services"]["ollama-pull"]
    both = run_compose_script(pull, {"VLM_MODEL": "moondream:1.8b", "LLM_MODEL": "llama3:latest"}, tmp_path, "ollama")
    assert both.returncode == 0 and both.stdout.splitlines() == ["pull", "moondream:1.8b", "pull", "llama3:latest"]
    llm_only = run_compose_script(pull, {**VLLM_LINES, "LLM_MODEL": "llama3:latest"}, tmp_path, "ollama")
    assert llm_only.returncode == 0 and llm_only.stdout.splitlines() == ["pull", "llama3:latest"]


# The model servers (engines): where each role's model is, from the chart's values.

ENGINE_SETTINGS = {f"{role}_{name}" for role in ("VLM", "LLM") for name in
                   ("BACKEND", "BASE_URL", "SLOTS", "API_KEY", "API_KEY_FILE")} | {"VLM_MAX_IMAGES"}


def node_settings(docs: list[dict], container: dict) -> Settings:
    """What the node reads in a container: its ConfigMap and its own values,
    but the files, which exist in the pod only (their mounts are checked apart)."""
    env = find(docs, "ConfigMap")["data"] | env_values(container)
    return Settings.from_env({k: v for k, v in env.items() if not k.endswith("_FILE")})


def key_file(deployment: dict, container: str, role: str) -> tuple[str, str] | None:
    """(Secret, key) whose value the container reads as ROLE_API_KEY_FILE, or None."""
    c = containers(deployment)[container]
    path = env_values(c).get(f"{role}_API_KEY_FILE")
    if path is None:
        assert f"{role.lower()}-api-key" not in mounts(c), (container, role)
        return None
    volume = f"{role.lower()}-api-key"
    directory, file = path.rsplit("/", 1)
    assert mounts(c)[volume] == directory, (container, role)
    secret = volumes(deployment)[volume]["secret"]
    [item] = [i for i in secret["items"] if i["path"] == file]
    return secret["secretName"], item["key"]


def test_by_default_both_roles_are_on_the_release_ollama(check):
    for name in ("helm-default", "helm-full", "helm-seed"):
        docs = render(check, name)
        config = find(docs, "ConfigMap")["data"]
        assert not ENGINE_SETTINGS & set(config), f"{name}: the node's defaults, as before the engines' values"
        settings = node_settings(docs, containers(find(docs, "Deployment", "-server"))["server"])
        assert settings.role("VLM").urls == settings.role("LLM").urls == ("http://vlm-node-ollama:11434",)
        assert (settings.vlm_model, settings.llm_model) == (Settings.vlm_model, Settings.llm_model)
        find(docs, "Deployment", "-ollama")
        find(docs, "PersistentVolumeClaim", "-ollama")
        assert not [d for d in docs if d["kind"] == "StatefulSet" and "ollama" in d["metadata"]["name"]]
        assert not [d for d in docs if d["metadata"]["name"].endswith("-engines")], "no key, no Secret"


def test_the_vlm_on_an_external_openai_server_with_its_key(check):
    docs = render(check, "helm-engines-openai-vlm")
    config = find(docs, "ConfigMap")["data"]
    assert {k: config[k] for k in ENGINE_SETTINGS & set(config)} == {
        "VLM_BACKEND": "openai", "VLM_BASE_URL": "http://qwen-vl-predictor.models.svc.cluster.local/openai/v1",
        "VLM_SLOTS": "16", "VLM_MAX_IMAGES": "4",
    }, "the LLM stays on the node's defaults: the release's Ollama"
    assert config["VLM_MODEL"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    server, worker = find(docs, "Deployment", "-server"), find(docs, "Deployment", "-worker")
    settings = node_settings(docs, containers(server)["server"])
    assert (settings.vlm_backend, settings.caption_concurrency, settings.vlm_max_images) == ("openai", 16, 4)
    assert (settings.llm_backend, settings.role("LLM").urls) == ("ollama", ("http://vlm-node-ollama:11434",))
    find(docs, "Deployment", "-ollama")
    for deployment, container in ((server, "server"), (worker, "worker")):
        assert key_file(deployment, container, "VLM") == ("vlm-node-vlm-key", "token"), container
        assert key_file(deployment, container, "LLM") is None
    assert key_file(server, "bridge", "VLM") is None, "the bridge reaches no model"
    assert not [d for d in docs if d["metadata"]["name"].endswith("-engines")], "your Secret, not one made"


def test_several_ollama_replicas_are_each_a_server_of_the_roles(check):
    docs = render(check, "helm-ollama-replicas")
    assert not [d for d in docs if d["kind"] in ("Deployment", "PersistentVolumeClaim") and "ollama" in d["metadata"]["name"]]
    sts = find(docs, "StatefulSet", "-ollama")
    headless = find(docs, "Service", "-ollama-headless")
    assert headless["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == headless["metadata"]["name"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["replicas"] == 3
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "30Gi", "a models volume per replica"
    assert "app.kubernetes.io/version" not in claim["metadata"]["labels"], "claim templates cannot change on upgrade"
    ollama = containers(sts)["ollama"]
    assert mounts(ollama)["models"] == "/root/.ollama" and ollama["resources"]["limits"]["nvidia.com/gpu"] == 1

    pods = [f"http://{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:11434" for i in range(3)]
    config = find(docs, "ConfigMap")["data"]
    assert config["VLM_BASE_URL"] == config["LLM_BASE_URL"] == ",".join(pods), "every replica, by its own name"
    assert "VLM_BACKEND" not in config and "LLM_BACKEND" not in config
    settings = node_settings(docs, containers(find(docs, "Deployment", "-server"))["server"])
    assert settings.role("VLM").urls == settings.role("LLM").urls == tuple(pods), "one pool of both roles"
    assert settings.caption_concurrency == 3 * settings.ollama_num_parallel, "a job fills every replica's slots"
    any_replica = find(docs, "Service", "-ollama")
    assert config["OLLAMA_HOST"] == f"http://{any_replica['metadata']['name']}:11434"
    assert any_replica["spec"]["selector"].items() <= pod_labels.items()


def test_both_roles_on_external_servers_and_no_ollama(check):
    docs = render(check, "helm-engines-external")
    assert not [d for d in docs if "ollama" in d["metadata"]["name"]], "no role is on an Ollama of the release"
    config = find(docs, "ConfigMap")["data"]
    assert (config["VLM_BACKEND"], config["LLM_BACKEND"]) == ("openai", "openai")
    assert config["VLM_BASE_URL"] == "http://vllm-router-service.vllm.svc/v1"
    assert config["LLM_BASE_URL"] == "http://llm-0.llm.models.svc:8080/v1,http://llm-1.llm.models.svc:8080/v1"
    assert (config["VLM_SLOTS"], config["LLM_SLOTS"], config["VLM_MAX_IMAGES"]) == ("64", "4", "8")
    assert (config["VLM_MODEL"], config["LLM_MODEL"]) == ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-coder-1.5b")
    made = find(docs, "Secret", "-engines")
    assert {k: base64.b64decode(v).decode() for k, v in made["data"].items()} == {"vlm-api-key": "sk-vlm"}
    assert not {"VLM_API_KEY", "LLM_API_KEY"} & set(config), "no key in the ConfigMap"
    for name, container in (("-server", "server"), ("-worker", "worker")):
        deployment = find(docs, "Deployment", name)
        assert key_file(deployment, container, "VLM") == (made["metadata"]["name"], "vlm-api-key")
        assert key_file(deployment, container, "LLM") == ("vlm-node-llm-key", "api-key")
        settings = node_settings(docs, containers(deployment)[container])
        assert (settings.vlm_backend, settings.llm_backend, settings.llm_slots) == ("openai", "openai", 4)
    annotations = find(docs, "Deployment", "-server")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations, "a key the chart stores restarts the pods when it changes"
