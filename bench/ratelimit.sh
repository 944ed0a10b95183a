#!/usr/bin/env bash
# bench/ratelimit.sh: what a rate limit costs when it never refuses. One nginx origin and three
# levee processes: the plain route (bench/levee-bench.lua), the same route with a memory-store
# rate limit per client address, and with the Redis store (bench/levee-ratelimit.lua; a
# redis-server of its own on BASE+4), loaded in alternating rounds with wrk; prints each round
# and the median memory/plain and redis/plain ratios of req/s and of levee's CPU per request.
#   ROUNDS=8 DURATION=2 CONNS=50 bench/ratelimit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-8} DURATION=${DURATION:-2} CONNS=${CONNS:-50}
BASE=${BASE_PORT:-18280}
. bench/lib.sh
bench_setup ratelimit
command -v redis-server >/dev/null || { echo "ratelimit: redis-server missing (scripts/setup.sh)" >&2; exit 2; }
bench_origin "$BASE"
redis-server --port $((BASE + 4)) --save '' --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
ORIGIN_PORT=$BASE EXTRA_PORT=$((BASE + 1)) build/levee -c bench/levee-bench.lua 2>"$work/plain.log" & pids+=($!)
plain_pid=$!
ORIGIN_PORT=$BASE EXTRA_PORT=$((BASE + 2)) build/levee -c bench/levee-ratelimit.lua 2>"$work/mem.log" & pids+=($!)
mem_pid=$!
RATE_REDIS=127.0.0.1:$((BASE + 4)) ORIGIN_PORT=$BASE EXTRA_PORT=$((BASE + 3)) \
  build/levee -c bench/levee-ratelimit.lua 2>"$work/redis-levee.log" & pids+=($!)
redis_pid=$!
for _ in $(seq 100); do redis-cli -p $((BASE + 4)) ping >/dev/null 2>&1 && break; sleep 0.05; done
bench_wait_up $BASE $((BASE + 1)) $((BASE + 2)) $((BASE + 3))
for p in 1 2 3; do rps 1 $((BASE + p)) "$plain_pid" >/dev/null; done
: >"$work/rounds"
for ((r = 1; r <= ROUNDS; r++)); do
  # the order rotates so no case always runs first
  case $((r % 3)) in
    0) a=$(rps "$DURATION" $((BASE + 1)) "$plain_pid"); b=$(rps "$DURATION" $((BASE + 2)) "$mem_pid"); c=$(rps "$DURATION" $((BASE + 3)) "$redis_pid") ;;
    1) b=$(rps "$DURATION" $((BASE + 2)) "$mem_pid"); c=$(rps "$DURATION" $((BASE + 3)) "$redis_pid"); a=$(rps "$DURATION" $((BASE + 1)) "$plain_pid") ;;
    2) c=$(rps "$DURATION" $((BASE + 3)) "$redis_pid"); a=$(rps "$DURATION" $((BASE + 1)) "$plain_pid"); b=$(rps "$DURATION" $((BASE + 2)) "$mem_pid") ;;
  esac
  echo "$r $a $b $c" | tee -a "$work/rounds" |
    awk '{printf "round %d: plain %.0f req/s %.1f us/req; memory %.0f req/s %.1f us/req (%d refused); redis %.0f req/s %.1f us/req (%d refused)\n",
          $1, $2, $3, $5, $6, $7, $8, $9, $10}'
done
mr=$(awk '{print $5 / $2}' "$work/rounds" | med)
mc=$(awk '{print $6 / $3}' "$work/rounds" | med)
rr=$(awk '{print $8 / $2}' "$work/rounds" | med)
rc=$(awk '{print $9 / $3}' "$work/rounds" | med)
awk -v mr="$mr" -v mc="$mc" -v rr="$rr" -v rc="$rc" -v n="$ROUNDS" 'BEGIN {
  printf "median over %d rounds: memory/plain req/s %.3f (cost %.1f%%), CPU per request %.3f (+%.1f%%)\n", n, mr, (1 - mr) * 100, mc, (mc - 1) * 100
  printf "                       redis/plain  req/s %.3f (cost %.1f%%), CPU per request %.3f (+%.1f%%) (levee only; redis-server not counted)\n", rr, (1 - rr) * 100, rc, (rc - 1) * 100 }'
