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

# rps SECONDS PORT PID -> "req/s cpu_us_per_request non2xx": wrk with $CONNS connections on
# 127.0.0.1:PORT, and the CPU (user+sys) process PID used per request meanwhile.
rps() {
  local t0 t1 out
  t0=$(ticks "$3")
  out=$(wrk -t1 -c"$CONNS" -d"$1"s "http://127.0.0.1:$2/")
  t1=$(ticks "$3")
  awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '/ requests in / {n = $1} /^Requests\/sec/ {r = $2}
    /Non-2xx/ {e = $NF} END {printf "%s %.2f %d\n", r, n ? t * 1e6 / hz / n : 0, e}' <<<"$out"
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

# Used by run.sh, routes.sh, idle.sh and profile.sh, which keep their started processes in
# `pids`, a running wrk in `wrk_pid` and their scratch files in `work`:
# bench_pin: CPU_PROXY and CPU_WRK (proxies on CPU 0, wrk and the origin on CPU 1) when
#   PIN != 0 and there are two CPUs and taskset; both empty otherwise.
# bench_spawn CPUS LOG cmd...: start in the background (pinned when CPUS is set); sets spawned.
# bench_stop_all: TERM to each of `pids`, up to 5 s each, then KILL; removes `work`. For trap EXIT.
# bench_wait_http NAME PID PORT LOG [PATH]: until an HTTP answer comes (exit 1 if PID dies).
# bench_ports_free PORT...: exit 1 if something listens on one of them.
# nginx_head DIR WORKERS [CONNECTIONS]: the top of an nginx.conf up to an open `http {`
#   (worker_connections 4096 unless CONNECTIONS, which also raises worker_rlimit_nofile).
# run_wrk URL SECONDS LOG [wrk options...]: wrk -t$THREADS -c$CONNS on CPU_WRK, bounded;
#   start_wrk (same arguments) starts it in the background, wait_wrk URL LOG waits for it.
# rss_kib PID...: VmRSS summed over the processes, KiB. children PID: its direct children.
bench_pin() {
  if [[ ${PIN:-1} != 0 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
    CPU_PROXY=${CPU_PROXY:-0} CPU_WRK=${CPU_WRK:-1}
  else
    CPU_PROXY='' CPU_WRK=''
  fi
}

bench_spawn() {
  local cpus=$1 log=$2; shift 2
  if [[ -n $cpus ]]; then taskset -c "$cpus" "$@" > "$log" 2>&1 &
  else "$@" > "$log" 2>&1 &
  fi
  spawned=$!
  pids+=("$spawned")
}

bench_stop_all() {
  local p i
  trap - EXIT INT TERM
  if [[ -n ${wrk_pid:-} ]]; then kill "$wrk_pid" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [[ -n ${work:-} ]]; then rm -rf "$work"; fi   # an OUT_DIR outside it is kept
}

bench_wait_http() {
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$2" 2>/dev/null || { cat "$4" >&2; echo "bench: $1 exited at startup" >&2; exit 1; }
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$3${5:-/}" && return 0
    sleep 0.1
  done
  cat "$4" >&2; echo "bench: $1 not answering on 127.0.0.1:$3" >&2; exit 1
}

# bench_workdir NAME [ON_EXIT]: $work (readable by nginx's workers, which run as "nobody"
# when started by root), $out (OUT_DIR, or inside $work), no processes yet, and the traps
# that stop what the script started (ON_EXIT, default bench_stop_all).
bench_workdir() {
  work=$(mktemp -d "/tmp/levee-$1.XXXX")
  chmod 755 "$work"
  out=${OUT_DIR:-$work/out}
  mkdir -p "$out"
  pids=() wrk_pid=
  # shellcheck disable=SC2064 # the handler's name is meant to be expanded now
  trap "${2:-bench_stop_all}" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# bench_origin_start: the origin every script measures against, in $work/origin: nginx, one
# worker, "ok\n" on / and 16 KiB on /16k, on 127.0.0.1:$BASE_PORT, pinned with the wrk CPU.
bench_origin_start() {
  od=$work/origin; mkdir -p "$od"; chmod 755 "$od"
  head -c 16384 /dev/zero | tr '\0' x > "$od/16k"; chmod 644 "$od/16k"
  { nginx_head "$od" 1; cat <<EOF
  server {
    listen 127.0.0.1:$BASE_PORT backlog=4096;
    location = /16k { default_type application/octet-stream; alias $od/16k; }
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
  } > "$od/nginx.conf"
  bench_spawn "$CPU_WRK" "$od/stdout.log" nginx -p "$od" -c "$od/nginx.conf" -e "$od/error.log"
  bench_wait_http origin "$spawned" "$BASE_PORT" "$od/error.log"
}

bench_ports_free() {
  local p
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "bench: port $p in use (set BASE_PORT)" >&2; exit 1; fi
  done
}

nginx_head() {
  cat <<NGINX
worker_processes $2;
${3:+worker_rlimit_nofile $((2 * $3 + 64));}
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${3:-4096}; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $1/tmp-body; proxy_temp_path $1/tmp-proxy; fastcgi_temp_path $1/tmp-fcgi;
  uwsgi_temp_path $1/tmp-uwsgi; scgi_temp_path $1/tmp-scgi;
NGINX
}

start_wrk() {   # killed 20 s after -d if it hangs
  local url=$1 secs=$2 log=$3 pin=()
  shift 3
  if [[ -n $CPU_WRK ]]; then pin=(taskset -c "$CPU_WRK"); fi
  timeout -k 5 $((secs + 20)) "${pin[@]}" wrk -t"${THREADS:-1}" -c"${CONNS:-50}" -d"$secs"s --latency "$@" "$url" > "$log" 2>&1 &
  wrk_pid=$!
}

wait_wrk() {   # wait_wrk URL LOG
  wait "$wrk_pid" || { wrk_pid=; cat "$2" >&2; echo "bench: wrk failed on $1" >&2; exit 1; }
  wrk_pid=
}

run_wrk() {
  start_wrk "$@"
  wait_wrk "$1" "$3"
}

rss_kib() {
  local p sum=0 kb
  for p in "$@"; do kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status"); sum=$((sum + kb)); done
  echo "$sum"
}

children() {   # read from /proc: ps may be missing on a minimal install
  local f line rest ppid
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue   # a process that just ended
    rest=${line##*) }   # the name in parentheses may hold spaces; ppid is the 2nd field after it
    read -r _ ppid _ <<<"$rest"
    if [[ $ppid == "$1" ]]; then f=${f#/proc/}; echo "${f%/stat}"; fi
  done
}
