#!/usr/bin/env bash
# bench/idem.sh: what idempotency keys cost. One nginx origin, one levee with three routes —
# plain, keyed on the memory store, keyed on a Redis store (a real redis-server) — and wrk
# sending POSTs with a new Idempotency-Key each (so every request is a first: lock, forward,
# store). Alternating rounds; prints each round and the median keyed/plain ratios.
#   ROUNDS=6 DURATION=2 CONNS=50 bench/idem.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6} DURATION=${DURATION:-2} CONNS=${CONNS:-50}
BASE=${BASE_PORT:-18280}
. bench/lib.sh
bench_setup idem
bench_origin "$BASE"
redis-server --port $((BASE + 2)) --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" & pids+=($!)
REDIS_ADDR=127.0.0.1:$((BASE + 2)) ORIGIN_PORT=$BASE EXTRA_PORT=$((BASE + 1)) \
  build/levee -c bench/levee-idem.lua 2>"$work/levee.log" & pids+=($!)
levee_pid=$!
bench_wait_up $((BASE + 1))
run() {   # run SECONDS PATH -> "req/s cpu_us_per_request errors"
  local t0 t1 out
  t0=$(ticks "$levee_pid")
  out=$(wrk -t1 -c"$CONNS" -d"$1"s -s bench/idem-wrk.lua "http://127.0.0.1:$((BASE + 1))$2")
  t1=$(ticks "$levee_pid")
  awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '/ requests in / {n = $1} /^Requests\/sec/ {r = $2}
    /Non-2xx/ {e = $NF} END {printf "%s %.2f %d\n", r, n ? t * 1e6 / hz / n : 0, e}' <<<"$out"
}
for p in /plain /memory/x /redis/x; do run 1 "$p" >/dev/null; done
: > "$work/rounds"
for ((r = 1; r <= ROUNDS; r++)); do
  a=$(run "$DURATION" /plain); b=$(run "$DURATION" /memory/x); c=$(run "$DURATION" /redis/x)
  echo "$r $a $b $c" | tee -a "$work/rounds" | awk '{printf "round %d: plain %.0f req/s %.1f us/req | memory %.0f req/s %.1f us/req | redis %.0f req/s %.1f us/req | non-2xx %d %d %d\n", $1, $2, $3, $5, $6, $8, $9, $4, $7, $10}'
done
echo "median over $ROUNDS rounds (same-round ratios to the plain route):"
echo "  memory store: req/s $(awk '{print $5 / $2}' "$work/rounds" | med), CPU per request $(awk '{print $6 / $3}' "$work/rounds" | med)"
echo "  redis store:  req/s $(awk '{print $8 / $2}' "$work/rounds" | med), CPU per request $(awk '{print $9 / $3}' "$work/rounds" | med)"
