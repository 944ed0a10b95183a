# bench/lib.sh: shared by the bench scripts (sourced, not run).
# shellcheck shell=bash
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

# Used by run.sh (added; the helpers above are unchanged):
# tree_pids PID...: the processes and all their descendants (from /proc).
# tree_ticks PID...: user+sys clock ticks summed over those trees.
# wrk_parse LOG: "rps p99_ms requests errors" from a `wrk --latency` log.
tree_pids() {
  local p
  for p in "$@"; do
    [[ -d /proc/$p ]] || continue
    echo "$p"
    # shellcheck disable=SC2046
    tree_pids $(ps -o pid= --ppid "$p" 2>/dev/null || true)
  done
}

tree_ticks() {
  local p t=0 v
  for p in $(tree_pids "$@"); do
    v=$(awk '{s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13]}' "/proc/$p/stat" 2>/dev/null) || continue
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

wrk_parse() {
  awk 'function ms(v) { if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
                        if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
                        if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
                        return v + 0 }
       $1 == "99%" { p99 = ms($2) }
       / requests in / { req = $1 }
       /Non-2xx or 3xx responses:/ { err += $NF }
       /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
       /^Requests\/sec:/ { rps = $2 }
       END { if (rps == "") exit 1; printf "%.1f %.3f %d %d\n", rps, p99, req, err }' "$1"
}

# For scripts that keep their own list of started processes in `pids`:
cleanup() { local p; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

port_up() {   # port_up PORT: until something accepts on it (a TCP connect, no request: an
  local i     # HTTP check through a proxy would leave a pooled upstream connection behind)
  for ((i = 0; i < 100; i++)); do (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "${0##*/}: nothing listens on 127.0.0.1:$1" >&2; return 1
}

table() {   # table TSV: aligned columns (column(1) is not on every Debian install)
  awk -F'\t' '{for (i = 1; i <= NF; i++) {c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i)}; if (NF > nf) nf = NF}
    END {for (r = 1; r <= NR; r++) for (i = 1; i <= nf; i++) printf (i < nf ? "%-" w[i] "s  " : "%s\n"), c[r, i]}' "$1"
}
