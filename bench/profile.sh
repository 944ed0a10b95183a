#!/usr/bin/env bash
# bench/profile.sh: where levee spends its CPU under load. One nginx origin ("ok\n" on /, 16 KiB
# on /16k), levee (bench/levee-bench.lua) pinned to CPU 0, wrk -t1 -c50 and the origin on
# CPU 1; for each body, `perf record` on the levee process for DURATION seconds of load, then
# the top TOP symbols by self time (`perf report --no-children`) and the heaviest call chains
# that pass through levee's own code.
#   BODIES="small 16k" DURATION=6 TOP=15 bench/profile.sh        (about a minute)
# Knobs: CALLGRAPH=dwarf (unwinds levee's -O2 frames, which keep no frame pointers; STACK=65528
# bytes of stack per sample: libuv's poll loop keeps a 12 KiB array on it, and less leaves
# chains cut short; about 30 MB of perf.data per second), fp (frame pointers only: cheap,
# chains broken in levee and libuv), none; FREQ=499 (samples/s), CONNS=50, OUT_DIR=dir (perf.data and reports kept
# there), BUILD=0 (no setup, no build: LEVEE_BIN, default build/levee), LEVEE_BENCH_CONFIG=file
# with URL_PATH=/path (for another configuration, e.g. one of bench/routes.sh's), PIN=0,
# BASE_PORT=18780. perf needs perf_event_open: root, or kernel.perf_event_paranoid <= 1; with
# no hardware counters (VMs) it samples cpu-clock, which is what this script asks for anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=bench/lib.sh
. bench/lib.sh

BODIES=${BODIES:-"small 16k"} DURATION=${DURATION:-6} TOP=${TOP:-15} FREQ=${FREQ:-499}
STACK=${STACK:-65528} CALLGRAPH=${CALLGRAPH:-dwarf} CONNS=${CONNS:-50} THREADS=1 BASE_PORT=${BASE_PORT:-18780}
bench_pin
if [[ ${BUILD:-1} != 0 ]]; then
  scripts/setup.sh --bench
  scripts/build.sh release >/dev/null
fi
levee_bin=${LEVEE_BIN:-$root/build/levee}
config=${LEVEE_BENCH_CONFIG:-$root/bench/levee-bench.lua}
for t in wrk curl nginx perf "$levee_bin"; do
  command -v "$t" >/dev/null || { echo "profile: $t missing (perf: Debian package linux-perf; strace: strace)" >&2; exit 2; }
done
case $CALLGRAPH in
  dwarf) cg=(--call-graph "dwarf,$STACK") ;;
  fp) cg=(--call-graph fp) ;;
  none) cg=() ;;
  *) echo "profile: CALLGRAPH is dwarf, fp or none" >&2; exit 2 ;;
esac

bench_workdir profile
bench_ports_free "$BASE_PORT" $((BASE_PORT + 1))

bench_origin_start
export EXTRA_PORT=$((BASE_PORT + 1)) ORIGIN_PORT=$BASE_PORT   # read by levee-bench.lua
bench_spawn "$CPU_PROXY" "$work/levee.log" "$levee_bin" -c "$config"
levee_pid=$spawned
bench_wait_http levee "$levee_pid" "$EXTRA_PORT" "$work/levee.log" "${URL_PATH:-/}"

# perf as root is allowed whatever perf_event_paranoid says; otherwise it must be <= 1.
perf_ok() { perf record -q -e cpu-clock -o "$work/probe.data" -- true >/dev/null 2>&1; }
perf_ok || { echo "profile: perf record is not permitted here (kernel.perf_event_paranoid =" \
  "$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?'); run as root or lower it to 1)" >&2; exit 1; }

declare -A PATH_OF=([small]=/ [16k]=/16k)
for b in $BODIES; do
  url=http://127.0.0.1:$EXTRA_PORT${URL_PATH:-${PATH_OF[$b]}}
  run_wrk "$url" 1 "$work/warmup.log"
  # wrk runs 2 s longer than perf records, so every sample is taken under full load.
  start_wrk "$url" $((DURATION + 2)) "$out/wrk-$b.log"
  sleep 1
  perf record -q -e cpu-clock -F "$FREQ" "${cg[@]}" -p "$levee_pid" -o "$out/perf-$b.data" \
    -- sleep "$DURATION" > "$out/perf-record-$b.log" 2>&1
  wait_wrk "$url" "$out/wrk-$b.log"
  read -r rps _ req err < <(wrk_parse "$out/wrk-$b.log")
  echo "== $b body: $url, wrk -t1 -c$CONNS, $rps req/s, $req requests, $err errors; perf $CALLGRAPH, ${DURATION}s =="
  data=$out/perf-$b.data
  perf report -i "$data" --no-children --stdio -g none --sort dso --percent-limit 0.5 2>/dev/null |
    awk '/^ +[0-9.]+%/ {printf "%s %s  ", $1, $2} END {print ""}' | sed 's/^/by object: /' | tee "$out/dso-$b.txt"
  echo "-- top $TOP symbols by self time"
  perf report -i "$data" --no-children --stdio -g none --sort dso,sym 2>/dev/null |
    grep -E '^ +[0-9.]+%' | awk -v n="$TOP" 'NR <= n' | tee "$out/top-$b.txt"
  if [[ $CALLGRAPH != none ]]; then
    echo "-- levee's own functions by inclusive time (children: what runs under them, kernel included)"
    perf report -i "$data" --children --stdio -g none --sort dso,sym 2>/dev/null |
      awk -v bin="${levee_bin##*/}" '/^ +[0-9.]+%/ && $3 == bin && $5 !~ /^(_start|main|run|0x)/' |
      awk -v n="$TOP" 'NR <= n' | tee "$out/inclusive-$b.txt"
    # The chains under each of the top entries, callers first (for reading, not printed).
    perf report -i "$data" --no-children --stdio --sort dso,sym -g caller,0.5,callee,function,percent \
      --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' > "$out/chains-$b.txt"
    echo "-- call chains of the top entries: $out/chains-$b.txt"
  fi
  echo
done
echo "# perf.data and reports: $out$([[ -z ${OUT_DIR:-} ]] && echo ' (removed on exit; set OUT_DIR to keep)')" >&2
