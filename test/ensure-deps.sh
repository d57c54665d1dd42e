#!/usr/bin/env bash
# Installs what the test suites need and is missing, then stays quiet: run by `npm test` first (and so by .ci/run),
# so the README's test command passes on a fresh Debian machine by itself. Idempotent.
#   - Debian packages: PyTorch with a usable BLAS and the fortunes corpus (the trainer's tests). Add new system
#     dependencies of the tests (nats-server, chromium, prometheus, ...) to the list below, nowhere else.
#   - node_modules: `npm ci` when it is missing or older than package-lock.json.
# SWITCHYARD_SKIP_DEPS=1 skips both (a machine managed by other means).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SWITCHYARD_SKIP_DEPS:-}" = "1" ] && exit 0

apt_packages=(python3-torch libopenblas0-pthread fortunes-min fortunes nats-server chromium prometheus)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
else
  echo "ensure-deps: not a Debian system (no dpkg-query); install the equivalents of: ${apt_packages[*]}" >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
      echo "ensure-deps: the tests need Debian packages ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "ensure-deps: installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm writes node_modules/.package-lock.json on every install: older than the lockfile means out of date.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "ensure-deps: node_modules missing or older than package-lock.json: npm ci"
  npm ci --no-audit --no-fund
fi
