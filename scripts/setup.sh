#!/usr/bin/env bash
# Installs the Debian packages levee needs to build, test and benchmark, when any is missing.
# Idempotent: a machine that has everything is left alone (no apt-get call at all).
set -euo pipefail

PKGS=(build-essential cmake pkg-config clang-format clang libclang-rt-14-dev
      liblua5.4-dev lua5.4 libuv1-dev libssl-dev node-llhttp libhiredis-dev libjansson-dev
      lua-busted lua-socket lua-cjson redis-server curl openssl chromium
      prometheus) # prometheus: promtool, used by spec/integration/metrics_spec.lua
if [[ ${1:-} == --bench ]]; then PKGS+=(nginx haproxy wrk linux-perf strace); fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
