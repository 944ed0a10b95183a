#!/usr/bin/env bash
# bench/sharedstate.sh: builds bench_sharedstate (bench/sharedstate.c) in build/ and runs it:
# the cost per request of the per-route lock around the retry budget and circuit breaker
# when worker threads share a route, against no lock, a spinlock and sharded counters.
#   bench/sharedstate.sh [-n ITERATIONS_PER_THREAD] [-r ROUNDS]    (defaults 1000000, 5)
# BUILD_DIR=build (re-configured with its cached settings, so that the target is known; a
# new directory is configured as scripts/build.sh release does). About two minutes on 2 CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build}
flags=()
[[ -f $dir/CMakeCache.txt ]] || flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j2 --target bench_sharedstate >/dev/null
exec "$dir/bench_sharedstate" "$@"
