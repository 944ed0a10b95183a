#!/usr/bin/env bash
# bench/run.sh: levee beside nginx and HAProxy, reverse proxies to the same nginx origin, on
# this machine, in the same run, in interleaved rounds; then levee's ratios to each peer.
#   ROUNDS=8 DURATION=2 BODIES="small 16k" WORKERS=1 THREADS=1 CONNS=50 bench/run.sh
# Knobs: WARMUP=1 (s per target and body, unmeasured), BASE_PORT=18080 (origin; nginx +1,
# HAProxy +2, levee +9), PEERS="nginx haproxy", OUT_DIR=dir (raw results kept there),
# BUILD=0 (no setup, no build: use LEVEE_BIN, default build/levee), PIN=0 (no taskset),
# CPU_PROXY=0 CPU_WRK=1 (the origin runs on CPU_WRK too), LEVEE_BENCH_CONFIG=file.
# A/B: LEVEE_BASELINE=/path/to/an/older/levee adds it as the target "baseline" (port +8, same
# configuration, pinned and loaded like the others), so "levee / baseline" is a before/after
# table from one run; LEVEE_BASELINE_LUA_DIR sets its LEVEE_LUA_DIR when its own is gone.
# Ratios, not absolute numbers, are what to quote: the machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh

ROUNDS=${ROUNDS:-8} DURATION=${DURATION:-2} WARMUP=${WARMUP:-1}
THREADS=${THREADS:-1} CONNS=${CONNS:-50} WORKERS=${WORKERS:-1}
BODIES=${BODIES:-"small 16k"} PEERS=${PEERS:-"nginx haproxy"}
BASE_PORT=${BASE_PORT:-18080}
ncpu=$(nproc)
bench_pin

if [[ ${BUILD:-1} != 0 ]]; then
  scripts/setup.sh --bench
  scripts/build.sh release >/dev/null
fi
levee_bin=${LEVEE_BIN:-$root/build/levee}
config=${LEVEE_BENCH_CONFIG:-$root/bench/levee-bench.lua}
baseline_bin=${LEVEE_BASELINE:-}
for t in wrk curl nginx "$levee_bin" ${baseline_bin:+"$baseline_bin"}; do
  command -v "$t" >/dev/null || { echo "bench: $t missing (scripts/setup.sh --bench)" >&2; exit 2; }
done
[[ $WORKERS == 1 ]] || echo "bench: levee runs one event loop; WORKERS=$WORKERS applies to nginx and HAProxy only" >&2

bench_workdir bench

bench_ports_free "$BASE_PORT" $((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 9)) \
  ${baseline_bin:+$((BASE_PORT + 8))}

# The origin: nginx, one worker, "ok\n" on / and 16 KiB on /16k; it shares the wrk CPU.
bench_origin_start

declare -A PID_OF PORT_OF VERSION_OF
targets=(levee)
PORT_OF[levee]=$((BASE_PORT + 9))
for peer in $PEERS; do
  d=$work/$peer; mkdir -p "$d"; chmod 755 "$d"
  case $peer in
    nginx)
      PORT_OF[nginx]=$((BASE_PORT + 1))
      { nginx_head "$d" "$WORKERS"; cat <<EOF
  upstream origin { server 127.0.0.1:$BASE_PORT; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${PORT_OF[nginx]} backlog=4096;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
      } > "$d/nginx.conf"
      bench_spawn "$CPU_PROXY" "$d/stdout.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
      VERSION_OF[nginx]=$(nginx -v 2>&1 | sed 's/.*version: //') ;;
    haproxy)
      command -v haproxy >/dev/null || { echo "bench: haproxy missing, skipped" >&2; continue; }
      PORT_OF[haproxy]=$((BASE_PORT + 2))
      cat > "$d/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:${PORT_OF[haproxy]}
  default_backend be
backend be
  server origin 127.0.0.1:$BASE_PORT
EOF
      bench_spawn "$CPU_PROXY" "$d/stdout.log" haproxy -db -f "$d/haproxy.cfg"
      VERSION_OF[haproxy]=$(haproxy -v 2>/dev/null | awk 'NR == 1 {print "haproxy/" $3}') ;;
    *) echo "bench: unknown peer $peer" >&2; exit 2 ;;
  esac
  PID_OF[$peer]=$spawned
  targets+=("$peer")
  bench_wait_http "$peer" "$spawned" "${PORT_OF[$peer]}" "$d/stdout.log"
  for f in "$d/nginx.conf" "$d/haproxy.cfg"; do if [[ -f $f ]]; then cp "$f" "$out/$peer.${f##*/}"; fi; done
done
export EXTRA_PORT=${PORT_OF[levee]} ORIGIN_PORT=$BASE_PORT   # read by levee-bench.lua
bench_spawn "$CPU_PROXY" "$work/levee.log" "$levee_bin" -c "$config"
PID_OF[levee]=$spawned
cp "$config" "$out/levee.${config##*/}"
VERSION_OF[levee]=$("$levee_bin" --version 2>&1 | head -1)
bench_wait_http levee "$spawned" "${PORT_OF[levee]}" "$work/levee.log"
if [[ -n $baseline_bin ]]; then   # the older build: same configuration, its own port
  PORT_OF[baseline]=$((BASE_PORT + 8))
  baseline_env=(env EXTRA_PORT="${PORT_OF[baseline]}")
  if [[ -n ${LEVEE_BASELINE_LUA_DIR:-} ]]; then baseline_env+=(LEVEE_LUA_DIR="$LEVEE_BASELINE_LUA_DIR"); fi
  bench_spawn "$CPU_PROXY" "$work/baseline.log" "${baseline_env[@]}" "$baseline_bin" -c "$config"
  PID_OF[baseline]=$spawned
  VERSION_OF[baseline]="$("${baseline_env[@]}" "$baseline_bin" --version 2>&1 | head -1), $baseline_bin"
  bench_wait_http baseline "$spawned" "${PORT_OF[baseline]}" "$work/baseline.log"
  targets+=(baseline)
fi

declare -A PATH_OF=([small]=/ [16k]=/16k) SIZE_OF=([small]=3 [16k]=16384)
for t in "${targets[@]}"; do for b in $BODIES; do
  got=$(curl -s -o /dev/null --max-time 5 -w '%{http_code} %{size_download}' "http://127.0.0.1:${PORT_OF[$t]}${PATH_OF[$b]}")
  [[ $got == "200 ${SIZE_OF[$b]}" ]] || { echo "bench: $t ${PATH_OF[$b]} gave '$got'" >&2; exit 1; }
done; done

{
  echo "# bench/run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -sr) cpus=$ncpu" \
       "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "# wrk -t$THREADS -c$CONNS -d${DURATION}s; rounds=$ROUNDS warmup=${WARMUP}s workers=$WORKERS" \
       "pin: proxies=${CPU_PROXY:-any} wrk+origin=${CPU_WRK:-any}"
  for t in "${targets[@]}"; do echo "# $t: 127.0.0.1:${PORT_OF[$t]} (${VERSION_OF[$t]})"; done
  echo "# origin: nginx 127.0.0.1:$BASE_PORT, 1 worker"
} | tee "$out/header.txt"

if ((WARMUP > 0)); then
  for t in "${targets[@]}"; do for b in $BODIES; do
    run_wrk "http://127.0.0.1:${PORT_OF[$t]}${PATH_OF[$b]}" "$WARMUP" "$work/warmup.log"
  done; done
fi

tsv=$out/rounds.tsv
hz=$(getconf CLK_TCK)
printf 'body\tround\ttarget\trps\tp99_ms\trequests\terrors\tcpu_us_per_req\n' > "$tsv"
n=${#targets[@]}
echo
printf '%-6s %5s %-8s %10s %9s %10s %6s\n' body round target 'req/s' 'p99 ms' 'cpu us/req' errors
for b in $BODIES; do
  for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do         # rotate the order each round: drift hits all alike
      t=${targets[(i + r) % n]}
      log=$out/wrk-$b-r$((r + 1))-$t.log
      c0=$(tree_ticks "${PID_OF[$t]}")
      run_wrk "http://127.0.0.1:${PORT_OF[$t]}${PATH_OF[$b]}" "$DURATION" "$log"
      c1=$(tree_ticks "${PID_OF[$t]}")
      read -r rps p99 req err < <(wrk_parse "$log") || { echo "bench: cannot parse $log" >&2; exit 1; }
      cpu=$(awk -v d=$((c1 - c0)) -v hz="$hz" -v n="$req" 'BEGIN {printf "%.2f", n ? d * 1e6 / hz / n : 0}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$b" $((r + 1)) "$t" "$rps" "$p99" "$req" "$err" "$cpu" >> "$tsv"
      printf '%-6s %5s %-8s %10.0f %9.3f %10.2f %6s\n' "$b" $((r + 1)) "$t" "$rps" "$p99" "$cpu" "$err"
    done
  done
done

# Medians over rounds per target; levee's ratios: per round levee / peer, median over rounds.
awk -F'\t' -v rounds="$ROUNDS" -v secs="$DURATION" -v threads="$THREADS" -v conns="$CONNS" '
  function med(a, n,   i, j, x) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) {x = a[j]; a[j] = a[j-1]; a[j-1] = x}
                                   return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  NR == 1 { next }
  { k = $1 SUBSEP $2 SUBSEP $3; rps[k] = $4; p99[k] = $5; cpu[k] = $8; err[$1 SUBSEP $3] += $7
    if (!($1 in seenb)) { seenb[$1] = 1; bodies[++nb] = $1 }
    if (!($3 in seent)) { seent[$3] = 1; tg[++nt] = $3 }
    if (!($2 in seenr)) { seenr[$2] = 1; rr[++nr] = $2 } }
  END {
    printf "\n== medians over %d rounds (%ds each, wrk -t%d -c%d) ==\n", rounds, secs, threads, conns
    printf "%-6s %-8s %10s %9s %10s %6s\n", "body", "target", "req/s", "p99 ms", "cpu us/req", "errors"
    for (bi = 1; bi <= nb; bi++) for (ti = 1; ti <= nt; ti++) {
      b = bodies[bi]; t = tg[ti]; n = 0; delete a; delete c; delete d
      for (ri = 1; ri <= nr; ri++) { k = b SUBSEP rr[ri] SUBSEP t; if (k in rps) { n++; a[n] = rps[k]; c[n] = p99[k]; d[n] = cpu[k] } }
      printf "%-6s %-8s %10.0f %9.3f %10.2f %6d\n", b, t, med(a, n), med(c, n), med(d, n), err[b SUBSEP t]
    }
    printf "\n== levee / peer (median over rounds of same-round ratios) ==\n"
    printf "%-6s %-8s %12s %10s %14s\n", "body", "peer", "req/s ratio", "p99 ratio", "cpu/req ratio"
    for (bi = 1; bi <= nb; bi++) for (ti = 1; ti <= nt; ti++) {
      b = bodies[bi]; t = tg[ti]; if (t == "levee") continue
      n = 0; delete a; delete c; delete d
      for (ri = 1; ri <= nr; ri++) { x = b SUBSEP rr[ri] SUBSEP "levee"; y = b SUBSEP rr[ri] SUBSEP t
        if ((x in rps) && (y in rps) && rps[y] > 0 && p99[y] > 0 && cpu[y] > 0) {
          n++; a[n] = rps[x] / rps[y]; c[n] = p99[x] / p99[y]; d[n] = cpu[x] / cpu[y] } }
      if (n) printf "%-6s %-8s %12.3f %10.3f %14.3f\n", b, t, med(a, n), med(c, n), med(d, n)
    }
    print "(req/s ratio > 1: levee serves more; p99 and cpu/req ratio < 1: levee is lower)"
  }' "$tsv" | tee "$out/summary.txt"
echo "# raw results: $out$([[ -z ${OUT_DIR:-} ]] && echo ' (removed on exit; set OUT_DIR to keep)')" >&2
