#!/usr/bin/env bash
# bench/syscalls.sh: system calls per proxied request, levee beside nginx under the same load.
# One nginx origin ("ok\n" on /, 16 KiB on /16k); levee (bench/levee-bench.lua) and nginx (one
# worker, keep-alive upstream as in bench/run.sh) pinned to CPU 0, wrk -t1 -c50 and the origin
# on CPU 1. For each body and proxy: a warm-up (pools filled), then `strace -c -f -p` on the
# serving process (levee; nginx's worker) while wrk sends REQUESTS requests and stops; the
# calls of each system call / REQUESTS. wrk's 50 connections are new in each run, so their
# accept and close are in the counts (50 / REQUESTS per request).
#   REQUESTS=20000 BODIES="small 16k" bench/syscalls.sh                 (under a minute)
# Knobs: PROXIES="levee nginx" (haproxy too), CONNS=50, OUT_DIR=dir (strace summaries kept),
# BUILD=0 (no setup, no build: LEVEE_BIN, default build/levee), PIN=0, BASE_PORT=18880.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh

REQUESTS=${REQUESTS:-20000} BODIES=${BODIES:-"small 16k"} PROXIES=${PROXIES:-"levee nginx"}
CONNS=${CONNS:-50} THREADS=1 BASE_PORT=${BASE_PORT:-18880}
bench_pin
if [[ ${BUILD:-1} != 0 ]]; then
  scripts/setup.sh --bench
  scripts/build.sh release >/dev/null
fi
levee_bin=${LEVEE_BIN:-$root/build/levee}
for t in wrk curl nginx strace "$levee_bin"; do
  command -v "$t" >/dev/null || { echo "syscalls: $t missing (perf: Debian package linux-perf; strace: strace)" >&2; exit 2; }
done

bench_workdir syscalls
bench_ports_free $(seq "$BASE_PORT" $((BASE_PORT + 3)))

bench_origin_start

declare -A PORT_OF SERVING_OF
i=1
for p in $PROXIES; do
  PORT_OF[$p]=$((BASE_PORT + i)) d=$work/$p
  mkdir -p "$d"; chmod 755 "$d"
  case $p in
    levee)
      EXTRA_PORT=${PORT_OF[$p]} ORIGIN_PORT=$BASE_PORT \
        bench_spawn "$CPU_PROXY" "$d/levee.log" "$levee_bin" -c bench/levee-bench.lua ;;
    nginx)
      { nginx_head "$d" 1; cat <<EOF
  upstream origin { server 127.0.0.1:$BASE_PORT; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${PORT_OF[$p]} backlog=4096;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
      } > "$d/nginx.conf"
      bench_spawn "$CPU_PROXY" "$d/stdout.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" ;;
    haproxy)
      printf '%s\n' global '  nbthread 1' defaults '  mode http' '  timeout connect 5s' \
        '  timeout client 30s' '  timeout server 30s' frontend fe "  bind 127.0.0.1:${PORT_OF[$p]}" \
        '  default_backend be' backend be "  server origin 127.0.0.1:$BASE_PORT" > "$d/haproxy.cfg"
      bench_spawn "$CPU_PROXY" "$d/stdout.log" haproxy -db -f "$d/haproxy.cfg" ;;
    *) echo "syscalls: unknown proxy $p" >&2; exit 2 ;;
  esac
  log=$d/levee.log; [[ $p == levee ]] || log=$d/stdout.log
  bench_wait_http "$p" "$spawned" "${PORT_OF[$p]}" "$log"
  SERVING_OF[$p]=$spawned
  if [[ $p == nginx ]]; then SERVING_OF[$p]=$(children "$spawned" | awk 'NR == 1'); fi
  i=$((i + 1))
done

declare -A PATH_OF=([small]=/ [16k]=/16k)
tsv=$out/syscalls.tsv
printf 'body\tproxy\tsyscall\tcalls\terrors\n' > "$tsv"
for b in $BODIES; do
  for p in $PROXIES; do
    url=http://127.0.0.1:${PORT_OF[$p]}${PATH_OF[$b]}
    run_wrk "$url" 1 "$work/warmup.log"
    trace=$out/strace-$b-$p.txt mark=$work/done-$b-$p
    strace -c -f -o "$trace" -p "${SERVING_OF[$p]}" 2>"$work/strace.err" & strace_pid=$!
    pids+=("$strace_pid")
    sleep 0.5   # attached (strace prints nothing to say so)
    # wrk stops after REQUESTS answers and leaves a mark: strace detaches once the load ends.
    WRK_REQUESTS=$REQUESTS WRK_MARK=$mark start_wrk "$url" 60 "$out/wrk-$b-$p.log" -s bench/wrk-count.lua
    for ((w = 0; w < 1200; w++)); do [[ -e $mark ]] && break; sleep 0.05; done
    [[ -e $mark ]] || { echo "syscalls: $p $b: $REQUESTS requests not done in 60 s" >&2; exit 1; }
    sleep 0.2   # the last answers in flight
    kill -INT "$strace_pid"; wait "$strace_pid" || true
    kill -INT "$wrk_pid"; wait_wrk "$url" "$out/wrk-$b-$p.log"
    # strace -c: "% time seconds usecs/call calls [errors] syscall"; the errors column may be empty.
    awk -v b="$b" -v p="$p" '$1 ~ /^[0-9.]+$/ && $NF != "total" {
      printf "%s\t%s\t%s\t%d\t%d\n", b, p, $NF, $4, NF == 6 ? $5 : 0 }' "$trace" >> "$tsv"
  done
done

awk -F'\t' -v n="$REQUESTS" -v proxies="$PROXIES" -v bodies="$BODIES" -v conns="$CONNS" '
  NR > 1 { k = $1 SUBSEP $2; c[k, $3] = $4; e[k, $3] = $5; tot[k] += $4; if (!($3 in seen)) { seen[$3] = 1; sc[++ns] = $3 } }
  END {
    np = split(proxies, px, " "); nb = split(bodies, bd, " ")
    for (s = 1; s <= ns; s++) for (bi = 1; bi <= nb; bi++) for (pi = 1; pi <= np; pi++) sum[sc[s]] += c[bd[bi], px[pi], sc[s]]
    for (i = 2; i <= ns; i++) for (j = i; j > 1 && sum[sc[j-1]] < sum[sc[j]]; j--) { x = sc[j]; sc[j] = sc[j-1]; sc[j-1] = x }
    printf "== system calls per request (%d requests, wrk -t1 -c%d; errors in brackets) ==\n", n, conns
    printf "%-16s", "syscall"
    for (bi = 1; bi <= nb; bi++) for (pi = 1; pi <= np; pi++) printf " %14s", bd[bi] " " px[pi]
    printf "\n"
    for (s = 1; s <= ns; s++) {   # those at 0.01 per request or more somewhere
      keep = 0
      for (bi = 1; bi <= nb; bi++) for (pi = 1; pi <= np; pi++) if (c[bd[bi], px[pi], sc[s]] / n >= 0.01) keep = 1
      if (!keep) continue
      printf "%-16s", sc[s]
      for (bi = 1; bi <= nb; bi++) for (pi = 1; pi <= np; pi++) {
        k = bd[bi] SUBSEP px[pi]; v = c[k, sc[s]] / n; er = e[k, sc[s]] / n
        printf " %14s", (er >= 0.01 ? sprintf("%.2f [%.2f]", v, er) : sprintf("%.2f", v))
      }
      printf "\n"
    }
    printf "%-16s", "total"
    for (bi = 1; bi <= nb; bi++) for (pi = 1; pi <= np; pi++) printf " %14.2f", tot[bd[bi], px[pi]] / n
    printf "\n"
  }' "$tsv" | tee "$out/summary.txt"
echo "# strace summaries: $out$([[ -z ${OUT_DIR:-} ]] && echo ' (removed on exit; set OUT_DIR to keep)')" >&2
