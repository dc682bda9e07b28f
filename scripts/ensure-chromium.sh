#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests, installed when missing.
# Where it cannot be installed the browser tests skip, except in CI, where
# this fails.
set -uo pipefail
[[ -x /usr/bin/chromium ]] && exit 0
echo "installing Debian's chromium for the browser tests (a few minutes on a new machine)"
as_root=()
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && as_root=(sudo -n)
if command -v apt-get >/dev/null \
  && "${as_root[@]}" apt-get update -qq \
  && DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
  exit 0
fi
echo "chromium could not be installed: the browser tests will be skipped" >&2
[[ "${CI:-}" == true ]] && exit 1
exit 0
