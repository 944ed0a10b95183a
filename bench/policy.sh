#!/usr/bin/env bash
# bench/policy.sh: what the policy path costs. One nginx origin, two levee processes — the
# plain route (bench/levee-bench.lua) and the same route with retries, budget, breaker and a
# Lua classify hook on every attempt (bench/levee-policy.lua) — loaded in alternating rounds
# with wrk; prints each round and the median policy/plain ratios.
#   ROUNDS=8 DURATION=2 CONNS=50 bench/policy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-8} DURATION=${DURATION:-2} CONNS=${CONNS:-50}
BASE=${BASE_PORT:-18180}
. bench/lib.sh
bench_setup policy
bench_origin "$BASE"
ORIGIN_PORT=$BASE EXTRA_PORT=$((BASE + 1)) build/levee -c bench/levee-bench.lua 2>"$work/plain.log" & pids+=($!)
plain_pid=$!
ORIGIN_PORT=$BASE EXTRA_PORT=$((BASE + 2)) build/levee -c bench/levee-policy.lua 2>"$work/policy.log" & pids+=($!)
policy_pid=$!
bench_wait_up $BASE $((BASE + 1)) $((BASE + 2))
rps 1 $((BASE + 1)) "$plain_pid" >/dev/null; rps 1 $((BASE + 2)) "$policy_pid" >/dev/null
: > "$work/rounds"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then a=$(rps "$DURATION" $((BASE + 1)) "$plain_pid"); b=$(rps "$DURATION" $((BASE + 2)) "$policy_pid")
  else b=$(rps "$DURATION" $((BASE + 2)) "$policy_pid"); a=$(rps "$DURATION" $((BASE + 1)) "$plain_pid"); fi
  echo "$r $a $b" | tee -a "$work/rounds" |
    awk '{printf "round %d: plain %.0f req/s %.1f us/req, policy %.0f req/s %.1f us/req\n", $1, $2, $3, $5, $6}'
done
rr=$(awk '{print $5 / $2}' "$work/rounds" | med)
cr=$(awk '{print $6 / $3}' "$work/rounds" | med)
awk -v rr="$rr" -v cr="$cr" -v n="$ROUNDS" 'BEGIN {
  printf "median over %d rounds: policy/plain req/s %.3f (cost %.1f%%); policy/plain CPU per request %.3f (+%.1f%%)\n",
         n, rr, (1 - rr) * 100, cr, (cr - 1) * 100 }'
