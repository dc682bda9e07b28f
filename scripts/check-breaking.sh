#!/usr/bin/env bash
# `buf breaking` against the previous commit: the API must not break in a
# way existing clients would notice. Skipped, with a message, where there is
# no previous commit with protos to compare with.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}
if ! git rev-parse -q --verify HEAD~1 >/dev/null 2>&1; then
  echo "buf breaking: no previous commit to compare with; skipped"
  exit 0
fi
if ! git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  echo "buf breaking: the previous commit has no buf.yaml; skipped"
  exit 0
fi
"$BUF" breaking --against '.git#ref=HEAD~1'
echo "buf breaking: no breaking change against HEAD~1"
