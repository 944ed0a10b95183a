#!/usr/bin/env bash
# bench/tracing.sh: what tracing costs on the hot path. One nginx origin (it also answers the
# OTLP export POSTs) and four levee processes (bench/levee-tracing.lua): tracing = false, and
# tracing with sample 0, 0.05 and 1 exporting every sampled span; loaded in rotating rounds with
# wrk. Prints each round and the median ratios to tracing = false of req/s and of levee's CPU
# per request (the exporter thread included: it is part of the levee process).
#   ROUNDS=8 DURATION=2 CONNS=50 bench/tracing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-8} DURATION=${DURATION:-2} CONNS=${CONNS:-50}
BASE=${BASE_PORT:-18380}
. bench/lib.sh
bench_setup tracing
bench_origin "$BASE"
names=(off 0 0.05 1)
lpids=()
for i in 0 1 2 3; do
  TRACE_SAMPLE=${names[$i]} ORIGIN_PORT=$BASE EXTRA_PORT=$((BASE + 1 + i)) \
    build/levee -c bench/levee-tracing.lua 2>"$work/levee-$i.log" & pids+=($!)
  lpids+=($!)
done
bench_wait_up $BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 4))
for i in 0 1 2 3; do rps 1 $((BASE + 1 + i)) "${lpids[$i]}" >/dev/null; done
: >"$work/rounds"
for ((r = 1; r <= ROUNDS; r++)); do
  res=()
  for k in 0 1 2 3; do   # the order rotates so no case always runs first
    i=$(((k + r) % 4))
    res[$i]=$(rps "$DURATION" $((BASE + 1 + i)) "${lpids[$i]}")
  done
  echo "$r ${res[0]} ${res[1]} ${res[2]} ${res[3]}" | tee -a "$work/rounds" |
    awk '{printf "round %d: off %.0f req/s %.1f us/req; sample 0 %.0f %.1f; sample 0.05 %.0f %.1f; sample 1 %.0f %.1f\n",
          $1, $2, $3, $5, $6, $8, $9, $11, $12}'
done
for i in 1 2 3; do
  rr=$(awk -v c=$((2 + 3 * i)) '{print $c / $2}' "$work/rounds" | med)
  cc=$(awk -v c=$((3 + 3 * i)) '{print $c / $3}' "$work/rounds" | med)
  awk -v n="${names[$i]}" -v rr="$rr" -v cc="$cc" -v k="$ROUNDS" 'BEGIN {
    printf "median over %d rounds: sample %-4s / off: req/s %.3f (cost %.1f%%), CPU per request %.3f (+%.1f%%)\n", k, n, rr, (1 - rr) * 100, cc, (cc - 1) * 100 }'
done
