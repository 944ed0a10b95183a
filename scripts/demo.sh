#!/usr/bin/env bash
# The one "try it" command: install what is missing, build, start a demo upstream
# (lv-testupstream on 127.0.0.1:9000 and :9001), start levee in front of it
# (clients: http://127.0.0.1:8080, admin: http://127.0.0.1:9901), show a short scripted
# tour (a retry that succeeds, a breaker that opens), then keep levee running in the
# foreground. Ctrl-C, or SIGTERM to this script's PID, stops everything it started.
#
# Environment:
#   LEVEE_DEMO_NO_SETUP=1        do not run scripts/setup.sh nor build (use LEVEE_BUILD as is)
#   LEVEE_BUILD=dir              build directory holding levee and lv-testupstream (default build)
#   LEVEE_DEMO_PORT=8080  LEVEE_DEMO_ADMIN_PORT=9901  LEVEE_DEMO_UPSTREAM_PORTS="9000 9001"
#   LEVEE_DEMO_TOUR=0            skip the tour
#   LEVEE_DEMO_PIDFILE=file      write "levee PID" and "upstream PID" lines there once serving
set -euo pipefail
# Own process group, so stopping the group never reaches whoever started this script.
# (An interactive shell already gives each job its own group; setsid(1) does not fork for a
# non-leader, so the PID the caller holds stays this script's.)
if [[ $(ps -o pgid= -p $$ | tr -d ' ') != "$$" ]]; then exec setsid "$BASH" "$0" "$@"; fi
cd "$(dirname "$0")/.."
root=$PWD

build=${LEVEE_BUILD:-build}
[[ $build == /* ]] || build=$root/$build
port=${LEVEE_DEMO_PORT:-8080}
admin=${LEVEE_DEMO_ADMIN_PORT:-9901}
read -r up1 up2 <<< "${LEVEE_DEMO_UPSTREAM_PORTS:-9000 9001}"
up2=${up2:-$((up1 + 1))}

if [[ ${LEVEE_DEMO_NO_SETUP:-0} != 1 ]]; then
  scripts/setup.sh
  if [[ -z ${LEVEE_BUILD:-} ]]; then
    scripts/build.sh release >/dev/null
  else
    cmake -S . -B "$build" >/dev/null && cmake --build "$build" -j"$(nproc)" --target levee lv-testupstream >/dev/null
  fi
fi
for b in levee lv-testupstream; do
  [[ -x $build/$b ]] || { echo "demo: $build/$b not found (build first, or unset LEVEE_DEMO_NO_SETUP)" >&2; exit 2; }
done

dir=$(mktemp -d /tmp/levee-demo.XXXX)
started=()
# shellcheck disable=SC2317  # called from the EXIT trap
stop_all() {   # what this script started, by PID, then the rest of our own process group
  local rc=$? p i
  trap - EXIT INT TERM
  for p in "${started[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${started[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [[ $(ps -o pgid= -p $$ | tr -d ' ') == "$$" ]]; then   # only our own group, never the caller's
    trap '' TERM
    kill -TERM -- "-$$" 2>/dev/null || true
  fi
  rm -rf "$dir"
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The demo configuration: examples/levee.lua's routes, on the ports above, plus a route whose
# breaker opens after 3 failures in a row (no fallback, so it answers 503 breaker-open).
cat > "$dir/levee.lua" <<EOF
return {
  listen = { "127.0.0.1:$port" },
  admin = "127.0.0.1:$admin",
  access_log = "access.log",            -- next to this file: $dir/access.log
  upstreams = {
    demo = { servers = { "127.0.0.1:$up1", "127.0.0.1:$up2" }, connect_timeout = "1s" },
  },
  routes = {
    { name = "api", match = { prefix = "/api" }, upstream = "demo", timeout = "5s", try_timeout = "1s",
      retry = { attempts = 3, on = { "connect-failure", "reset", "timeout", "gateway-error" },
                backoff = { base = "25ms", max = "1s", jitter = "full" } } },
    { name = "fragile", match = { prefix = "/fragile" }, upstream = "demo",
      retry = { attempts = 1 },
      breaker = { consecutive_failures = 3, open_for = "30s", min_requests = 1000 } },
    { name = "default", match = { prefix = "/" }, upstream = "demo" },
  },
}
EOF

"$build/lv-testupstream" --listen "127.0.0.1:$up1" --listen "127.0.0.1:$up2" --name demo \
  > "$dir/upstream.log" 2>&1 &
upstream=$!
started+=("$upstream")
"$build/levee" -c "$dir/levee.lua" &
levee=$!
started+=("$levee")

for ((i = 0; i < 100; i++)); do
  kill -0 "$levee" 2>/dev/null || { echo "demo: levee exited at startup" >&2; exit 1; }
  kill -0 "$upstream" 2>/dev/null || { cat "$dir/upstream.log" >&2; echo "demo: lv-testupstream exited at startup" >&2; exit 1; }
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break
  sleep 0.1
done
((i < 100)) || { echo "demo: levee not answering on 127.0.0.1:$port" >&2; exit 1; }
if [[ -n ${LEVEE_DEMO_PIDFILE:-} ]]; then
  printf 'levee %s\nupstream %s\n' "$levee" "$upstream" > "$LEVEE_DEMO_PIDFILE.tmp"
  mv "$LEVEE_DEMO_PIDFILE.tmp" "$LEVEE_DEMO_PIDFILE"
fi

show() {   # show CMD...: print the command (quoted where needed, ready to paste), run it
  local a line='$'
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=%-]+$ ]]; then line+=" $a"; else line+=" '${a//\'/\'\\\'\'}'"; fi
  done
  printf '\n%s\n' "$line"
  "$@" || true
}
access_line() {   # access_line PATH [TEXT]: the last access log line of PATH (with TEXT)
  local j
  for ((j = 0; j < 40; j++)); do
    grep -F "\"path\":\"$1\"" "$dir/access.log" 2>/dev/null | grep -F -- "${2:-}" | tail -1 | grep . && return 0
    sleep 0.05
  done
}

if [[ ${LEVEE_DEMO_TOUR:-1} != 0 ]]; then
  url=http://127.0.0.1:$port
  echo "== levee demo tour =="
  echo
  echo "1. A retry that succeeds: the upstream is told (X-Test-Plan) to answer the first attempt"
  echo "   with 503 and the next with 200; route \"api\" retries on gateway errors."
  show curl -s -H "X-Test-Plan: tour-$$:503,200" -H 'X-Test-Body: hello after a retry' \
    -w '  -> %{http_code}\n' "$url/api/retry"
  echo "   access log (\"attempts\" and \"tries\"):"
  access_line /api/retry
  echo
  echo "2. A breaker that opens: route \"fragile\" (/fragile) opens after 3 failures in a row."
  for k in 1 2 3; do
    show curl -s -o /dev/null -H 'X-Test-Status: 503' -w "  -> %{http_code} (failure $k)\n" "$url/fragile"
  done
  show curl -s -i "$url/fragile"
  echo
  echo "   access log (answered by levee, no upstream try):"
  access_line /fragile breaker-open
fi

cat >&2 <<MSG

levee demo: running (levee PID $levee, upstream PID $upstream). Try
  curl -i http://127.0.0.1:$port/api/hello
  curl -i -H 'X-Test-Status: 503' http://127.0.0.1:$port/api/flaky     (retried, then 503)
  curl -s http://127.0.0.1:$admin/status ; curl -s http://127.0.0.1:$admin/metrics
  open http://127.0.0.1:$admin/ for the dashboard;  access log: $dir/access.log
Ctrl-C (or kill $$) stops everything.
MSG
# levee stays in the background and the script waits on it: a trapped signal interrupts
# `wait` at once (it would wait for a foreground child to exit first).
set +e
wait "$levee"
rc=$?
exit "$rc"
