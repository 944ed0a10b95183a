#!/usr/bin/env bash
# bench/calls.sh: calls per proxied request of chosen functions in levee, counted exactly with
# uprobes (perf probe + perf stat), so the numbers do not move with the machine's load — a
# before/after check that needs no quiet machine. One nginx origin ("ok\n" on /, 16 KiB on
# /16k), levee (bench/levee-bench.lua) under wrk -t1 -c50 until REQUESTS answers; the calls
# made by the levee process meanwhile / REQUESTS. wrk's connections are new in each run (50
# connects, 50 closes in the counts).
#   REQUESTS=20000 BODIES="small 16k" bench/calls.sh                          (under a minute)
# Knobs: FUNCS="uv_timer_start uv_timer_stop clock_gettime malloc calloc realloc free" (looked
# up in levee's shared libraries), LEVEE_FUNCS="lv_headscan_feed lv__llhead_run" (levee's own
# symbols; a name the binary lacks is skipped), LEVEE_BASELINE=/path/to/an/older/levee (counted
# too, as a second column), CONNS=50, OUT_DIR=dir, BUILD=0 (no setup, no build: LEVEE_BIN),
# PIN=0, BASE_PORT=19180. The probes (group levee_calls_PID) are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh

REQUESTS=${REQUESTS:-20000} BODIES=${BODIES:-"small 16k"} CONNS=${CONNS:-50} THREADS=1
FUNCS=${FUNCS:-"uv_timer_start uv_timer_stop clock_gettime malloc calloc realloc free"}
LEVEE_FUNCS=${LEVEE_FUNCS-"lv_headscan_feed lv__llhead_run"}
BASE_PORT=${BASE_PORT:-19180}
bench_pin
if [[ ${BUILD:-1} != 0 ]]; then
  scripts/setup.sh --bench
  scripts/build.sh release >/dev/null
fi
levee_bin=${LEVEE_BIN:-$root/build/levee}
declare -A BIN_OF=([levee]=$levee_bin)
targets=(levee)
if [[ -n ${LEVEE_BASELINE:-} ]]; then BIN_OF[baseline]=$LEVEE_BASELINE; targets+=(baseline); fi
for t in wrk curl nginx perf nm ldd "${BIN_OF[@]}"; do
  command -v "$t" >/dev/null || { echo "calls: $t missing (perf: Debian package linux-perf; strace: strace)" >&2; exit 2; }
done

group=levee_calls_$$
cleanup_calls() { perf probe -q -d "$group:*" >/dev/null 2>&1 || true; bench_stop_all; }
bench_workdir calls cleanup_calls
bench_ports_free $(seq "$BASE_PORT" $((BASE_PORT + 2)))

# The probes: one per function and binary, at the symbol's address (a probe by name would
# also fire on the library's own PLT stub and count internal calls twice).
declare -A EVENTS_OF   # target -> comma-separated events; event -> function in NAME_OF
declare -A NAME_OF
k=0
add_probe() {   # add_probe TARGET FILE SYMBOL (nm lists; -D for a shared library)
  local target=$1 file=$2 sym=$3 addr ev
  addr=$( (nm -D --defined-only "$file" 2>/dev/null; nm --defined-only "$file" 2>/dev/null) |
    awk -v s="$sym" '!a && ($3 == s || $3 ~ "^" s "@@") && $2 ~ /^[TtWi]$/ {a = $1} END {print a}')
  if [[ -z $addr ]]; then echo "calls: $sym not in $file, skipped" >&2; return 0; fi
  ev=f$k; k=$((k + 1))
  perf probe -q -x "$file" -a "$group:$ev=0x$addr" >/dev/null 2>&1 ||
    { echo "calls: perf probe refused $sym in $file (root, or kernel.perf_event_paranoid and uprobes)" >&2; exit 1; }
  NAME_OF[$ev]=$sym
  EVENTS_OF[$target]+="${EVENTS_OF[$target]:+,}$group:$ev"
}
for t in "${targets[@]}"; do
  bin=${BIN_OF[$t]}
  for f in $FUNCS; do
    lib=$(ldd "$bin" | awk -v f="$f" 'BEGIN {want = (f ~ /^uv_/) ? "libuv" : (f ~ /^lua/ ? "liblua" : "libc.so")}
      index($1, want) == 1 && !lib {lib = $3} END {print lib}')
    if [[ -z $lib ]]; then echo "calls: no library for $f in $bin, skipped" >&2; continue; fi
    add_probe "$t" "$(readlink -f "$lib")" "$f"
  done
  for f in $LEVEE_FUNCS; do add_probe "$t" "$(readlink -f "$bin")" "$f"; done
done

bench_origin_start
declare -A PID_OF PORT_OF
i=1
for t in "${targets[@]}"; do
  PORT_OF[$t]=$((BASE_PORT + i)); i=$((i + 1))
  EXTRA_PORT=${PORT_OF[$t]} ORIGIN_PORT=$BASE_PORT \
    bench_spawn "$CPU_PROXY" "$work/$t.log" "${BIN_OF[$t]}" -c bench/levee-bench.lua
  PID_OF[$t]=$spawned
  bench_wait_http "$t" "$spawned" "${PORT_OF[$t]}" "$work/$t.log"
done

declare -A PATH_OF=([small]=/ [16k]=/16k)
tsv=$out/calls.tsv
printf 'body\ttarget\tfunction\tcalls\n' > "$tsv"
for b in $BODIES; do
  for t in "${targets[@]}"; do
    url=http://127.0.0.1:${PORT_OF[$t]}${PATH_OF[$b]} mark=$work/done-$b-$t stat=$out/stat-$b-$t.csv
    run_wrk "$url" 1 "$work/warmup.log"
    perf stat -x, -e "${EVENTS_OF[$t]}" -p "${PID_OF[$t]}" -o "$stat" > /dev/null 2>&1 & stat_pid=$!
    pids+=("$stat_pid")
    sleep 0.5   # attached
    WRK_REQUESTS=$REQUESTS WRK_MARK=$mark start_wrk "$url" 60 "$out/wrk-$b-$t.log" -s bench/wrk-count.lua
    for ((w = 0; w < 1200; w++)); do [[ -e $mark ]] && break; sleep 0.05; done
    [[ -e $mark ]] || { echo "calls: $t $b: $REQUESTS requests not done in 60 s" >&2; exit 1; }
    sleep 0.2   # the last answers in flight
    kill -INT "$stat_pid"; wait "$stat_pid" || true
    kill -INT "$wrk_pid"; wait_wrk "$url" "$out/wrk-$b-$t.log"
    awk -F, -v b="$b" -v t="$t" -v names="$(for e in "${!NAME_OF[@]}"; do printf '%s=%s ' "$e" "${NAME_OF[$e]}"; done)" '
      BEGIN { n = split(names, kv, " "); for (i = 1; i <= n; i++) { split(kv[i], p, "="); name[p[1]] = p[2] } }
      $1 ~ /^[0-9]+$/ { ev = $3; sub(/^.*:/, "", ev); printf "%s\t%s\t%s\t%d\n", b, t, name[ev], $1 }' "$stat" >> "$tsv"
  done
done

awk -F'\t' -v n="$REQUESTS" -v targets="${targets[*]}" -v bodies="$BODIES" -v conns="$CONNS" '
  NR > 1 { c[$1, $2, $3] = $4; if (!($3 in seen)) { seen[$3] = 1; fn[++nf] = $3 } }
  END {
    nt = split(targets, tg, " "); nb = split(bodies, bd, " ")
    printf "== calls per request (%d requests, wrk -t1 -c%d) ==\n", n, conns
    printf "%-18s", "function"
    for (bi = 1; bi <= nb; bi++) for (ti = 1; ti <= nt; ti++) printf " %16s", bd[bi] " " tg[ti]
    printf "\n"
    for (f = 1; f <= nf; f++) {
      printf "%-18s", fn[f]
      for (bi = 1; bi <= nb; bi++) for (ti = 1; ti <= nt; ti++) {
        k = bd[bi] SUBSEP tg[ti] SUBSEP fn[f]
        printf " %16s", ((k in c) ? sprintf("%.2f", c[k] / n) : "-")
      }
      printf "\n"
    }
  }' "$tsv" | tee "$out/summary.txt"
echo "# raw counts: $out$([[ -z ${OUT_DIR:-} ]] && echo ' (removed on exit; set OUT_DIR to keep)')" >&2
