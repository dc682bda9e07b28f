#!/usr/bin/env bash
# Generates the Python messages, stubs and typings from protos/ into
# clients/python/, and the TypeScript code into clients/typescript/src/gen/
# (buf generate with buf.gen.yaml and the npm package's own protoc-gen-es).
# With --check, generates into a temporary folder and fails when the
# committed code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"  # protoc finds the mypy plugins here

out=clients/python
if [[ "${1:-}" == "--check" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

mkdir -p "$out/vlmnode/v1"
rm -f "$out"/vlmnode/v1/*_pb2*.py "$out"/vlmnode/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc \
  -I protos -I third_party/googleapis \
  --python_out="$out" --pyi_out="$out" \
  --grpc_python_out="$out" --mypy_grpc_out="$out" \
  protos/vlmnode/v1/*.proto
: > "$out/vlmnode/v1/__init__.py"

# TypeScript. buf prepends -o to the `out` of buf.gen.yaml, so --check writes
# to $out/clients/typescript/src/gen. The plugin is the package's pinned
# protoc-gen-es: install the package from its lock when it is missing.
BUF=${BUF:-buf}  # the virtual environment's, from buf-bin
if [[ ! -x clients/typescript/node_modules/.bin/protoc-gen-es ]]; then
  echo "clients/typescript: npm ci (for protoc-gen-es)" >&2
  (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
ts_base=.
if [[ "${1:-}" == "--check" ]]; then
  ts_base=$out
fi
"$BUF" generate --template buf.gen.yaml -o "$ts_base"

if [[ "${1:-}" == "--check" ]]; then
  stale=0
  if ! diff -r -x __pycache__ -x '*.egg-info' "$out/vlmnode/v1" clients/python/vlmnode/v1; then
    stale=1
  fi
  if ! diff -r "$out/clients/typescript/src/gen" clients/typescript/src/gen; then
    stale=1
  fi
  if [[ $stale == 1 ]]; then
    echo "generated code is stale: run scripts/generate.sh and commit the result" >&2
    exit 1
  fi
  echo "generated code is up to date"
fi
