# bench/lib.sh: shared by bench/policy.sh and bench/idem.sh (sourced, not run).
# bench_setup NAME: setup + release build, a work dir, process cleanup on exit.
# bench_origin PORT: an nginx origin answering "ok\n" on 127.0.0.1:PORT (one worker).
# ticks PID: user+sys clock ticks of a process. med: median of numbers on stdin.

bench_setup() {
  scripts/setup.sh --bench
  scripts/build.sh release >/dev/null
  work=$(mktemp -d "/tmp/levee-$1.XXXX")
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
}

bench_origin() {
  cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { return 200 "ok\n"; } } }
CONF
  nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
}

bench_wait_up() {   # bench_wait_up PORT...: until each answers over HTTP
  local p
  for p in "$@"; do
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
  done
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
med() { sort -g | awk '{v[NR] = $1} END {print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
