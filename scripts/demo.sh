#!/usr/bin/env bash
# The one "try it" command: install what is missing, build, start a demo upstream on
# 127.0.0.1:9000 and :9001, and run levee in the foreground on examples/levee.lua
# (clients: http://127.0.0.1:8080, admin: http://127.0.0.1:9901). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release >/dev/null
build/lv-testupstream --listen 127.0.0.1:9000 --listen 127.0.0.1:9001 --name demo >/dev/null &
upstream=$!
trap 'kill $upstream 2>/dev/null; wait $upstream 2>/dev/null || true' EXIT
cat >&2 <<MSG
levee demo: try
  curl -i http://127.0.0.1:8080/api/hello
  curl -i -H 'X-Test-Status: 503' http://127.0.0.1:8080/api/flaky     (retried on the other server)
  curl -s http://127.0.0.1:9901/status ; curl -s http://127.0.0.1:9901/metrics
  open http://127.0.0.1:9901/ for the dashboard
MSG
build/levee -c examples/levee.lua
