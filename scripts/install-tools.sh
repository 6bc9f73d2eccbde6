#!/usr/bin/env bash
# System tools the lint, observability and page tests use: promtool + prometheus, docker-compose,
# Debian's chromium + chromium-driver (tests/ui drive the page at /ui in headless Chromium).
# Installs them with apt when missing. Outside CI a machine without apt (or root) only gets a
# warning, and the tests that need them skip; with CI=true a missing tool is an error.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
((${#missing[@]})) || exit 0

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo -n"
if command -v apt-get >/dev/null 2>&1 \
   && $sudo apt-get update -qq >/dev/null \
   && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
then
    echo "install-tools: installed ${missing[*]}"
elif [[ "${CI:-}" == "true" ]]; then
    echo "install-tools: could not install ${missing[*]} (apt-get as root is needed)" >&2
    exit 1
else
    echo "install-tools: WARNING: ${missing[*]} not installed; the tests that need them will skip" >&2
fi
