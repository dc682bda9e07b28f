#!/usr/bin/env bash
# Generates the Python messages, stubs and typings from protos/ into
# clients/python/. With --check, generates into a temporary folder and fails
# when the committed code differs.
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

if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r -x __pycache__ -x '*.egg-info' "$out/vlmnode/v1" clients/python/vlmnode/v1; then
    echo "generated code is stale: run scripts/generate.sh and commit the result" >&2
    exit 1
  fi
  echo "generated code is up to date"
fi
