#!/usr/bin/env bash
# bench/idle.sh: memory per idle keep-alive client connection, levee and nginx (one worker
# each) in the same run, both in front of one nginx origin ("ok\n"). For each proxy in turn:
# start it, warm it up (wrk -c50 for a second, so buffers every request needs exist already),
# read the serving process's RSS (levee; nginx's worker) and open descriptors; then
# bench/idle-client.lua opens N connections, completes one GET on each and leaves them idle;
# once RSS is steady, read both again: KiB per idle connection = ΔRSS / N. The descriptor
# count checks that the proxy holds the N connections; RSS after they close is shown too.
#   N=4000 bench/idle.sh                                                (under a minute)
# Knobs: PROXIES="levee nginx", OUT_DIR=dir (results kept there), BUILD=0 (no setup, no
# build: LEVEE_BIN, default build/levee), PIN=0, BASE_PORT=18980. Both proxies keep idle
# connections 300 s (levee limits.idle_timeout, nginx keepalive_timeout); the file-descriptor
# limit is raised to its hard limit, which must leave room for N (the client holds N, each
# proxy N plus its upstream connections).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh

N=${N:-4000} PROXIES=${PROXIES:-"levee nginx"} BASE_PORT=${BASE_PORT:-18980}
CONNS=50 THREADS=1
bench_pin
if [[ ${BUILD:-1} != 0 ]]; then
  scripts/setup.sh --bench
  scripts/build.sh release >/dev/null
fi
levee_bin=${LEVEE_BIN:-$root/build/levee}
for t in wrk curl nginx lua5.4 "$levee_bin"; do
  command -v "$t" >/dev/null || { echo "idle: $t missing (scripts/setup.sh --bench)" >&2; exit 2; }
done
lua5.4 -e 'require "socket"' 2>/dev/null || { echo "idle: lua-socket missing (scripts/setup.sh)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= N + 1024)) || { echo "idle: open-file limit $(ulimit -n) is too low for N=$N" >&2; exit 2; }

bench_workdir idle
bench_ports_free $(seq "$BASE_PORT" $((BASE_PORT + 2)))

bench_origin_start

fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
steady_rss() {   # steady_rss PID: RSS once two reads 0.5 s apart differ by <= 16 KiB (10 s at most)
  local a b i
  a=$(rss_kib "$1")
  for ((i = 0; i < 20; i++)); do
    sleep 0.5; b=$(rss_kib "$1")
    ((b - a <= 16 && a - b <= 16)) && break
    a=$b
  done
  echo "$b"
}

tsv=$out/idle.tsv
printf 'proxy\tconnections\trss_before_kib\trss_idle_kib\tkib_per_conn\tfds_added\trss_after_close_kib\n' > "$tsv"
port=$((BASE_PORT + 1))
for p in $PROXIES; do
  d=$work/$p; mkdir -p "$d"; chmod 755 "$d"
  case $p in
    levee)
      log=$d/levee.log
      EXTRA_PORT=$port ORIGIN_PORT=$BASE_PORT IDLE_CONNS=$N \
        bench_spawn "$CPU_PROXY" "$log" "$levee_bin" -c bench/levee-idle.lua ;;
    nginx)
      log=$d/stdout.log
      { nginx_head "$d" 1 $((N + 1024)); cat <<EOF
  keepalive_timeout 300s;
  upstream origin { server 127.0.0.1:$BASE_PORT; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
      } > "$d/nginx.conf"
      cp "$d/nginx.conf" "$out/nginx.conf"
      bench_spawn "$CPU_PROXY" "$log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" ;;
    *) echo "idle: unknown proxy $p" >&2; exit 2 ;;
  esac
  proxy_pid=$spawned
  bench_wait_http "$p" "$proxy_pid" "$port" "$log"
  serving=$proxy_pid
  if [[ $p == nginx ]]; then serving=$(children "$proxy_pid" | awk 'NR == 1'); fi
  run_wrk "http://127.0.0.1:$port/" 1 "$d/warmup.log"
  sleep 0.5   # wrk's connections closed
  rss0=$(steady_rss "$serving") fd0=$(fds "$serving")

  status=$d/client.status
  lua5.4 bench/idle-client.lua "$port" "$N" "$status" 300 2>"$d/client.err" & client=$!
  pids+=("$client")
  for ((i = 0; i < 1200; i++)); do
    [[ -s $status ]] && break
    kill -0 "$client" 2>/dev/null || { cat "$d/client.err" >&2; echo "idle: $p: client died" >&2; exit 1; }
    sleep 0.05
  done
  [[ -s $status ]] || { echo "idle: $p: $N connections not open within 60 s" >&2; exit 1; }
  read -r _ ready _ failed rest < "$status"
  ((failed == 0)) || echo "idle: $p: $failed connections failed (first: $rest)" >&2
  rss1=$(steady_rss "$serving") fd1=$(fds "$serving")
  kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true
  sleep 1   # the proxy sees the closes
  rss2=$(rss_kib "$serving")
  awk -v p="$p" -v n="$ready" -v a="$rss0" -v b="$rss1" -v f=$((fd1 - fd0)) -v c="$rss2" \
    'BEGIN {printf "%s\t%d\t%d\t%d\t%.2f\t%d\t%d\n", p, n, a, b, n ? (b - a) / n : 0, f, c}' >> "$tsv"
  kill -TERM "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true
done

printf 'idle keep-alive connections: N=%s, each after one GET / ("ok\\n"); RSS of the serving process\n' "$N"
table "$tsv" | tee "$out/idle.txt"
awk -F'\t' 'NR > 1 {k[$1] = $5} END {if (("levee" in k) && ("nginx" in k) && k["nginx"] > 0)
  printf "levee / nginx KiB per idle connection: %.2f\n", k["levee"] / k["nginx"]}' "$tsv" | tee -a "$out/idle.txt"
echo "# results: $out$([[ -z ${OUT_DIR:-} ]] && echo ' (removed on exit; set OUT_DIR to keep)')" >&2
