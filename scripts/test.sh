#!/usr/bin/env bash
# The one test command: install what is missing, build release and ASan+UBSan, run every test
# (C unit tests, busted unit specs, busted integration specs against the real binary) in both,
# then the ThreadSanitizer build's unit tests and multi-worker specs, then a short run of each
# fuzz target (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
status=0
for kind in release asan; do
  echo "=== $kind build" >&2
  scripts/build.sh "$kind"
  dir=build; [[ $kind == asan ]] && dir=build-asan
  # ASan: leaks are checked by the unit tests; in the server, abort on the first error.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  if ! ctest --test-dir "$dir" --output-on-failure -j2 --timeout 900 "$@"; then status=1; fi
done
# TSan: the unit tests (label `unit`) and the integration specs of several workers (label
# `workers`: spec/integration/*_workers_spec.lua) in build-tsan/, stopping at the first report.
# .ci/tsan.supp may silence third-party frames only (libuv, OpenSSL, Lua), never levee's.
# LEVEE_TSAN_EXCLUDE: a ctest -E regex of tests left out of this stage (default: those whose
# wall-clock limits TSan's slowdown exceeds, see below; empty: none). LEVEE_TSAN_STAGE=0 skips it.
if [[ ${LEVEE_TSAN_STAGE:-1} != 0 ]]; then
  echo "=== tsan build" >&2
  scripts/build.sh tsan
  supp=$PWD/.ci/tsan.supp
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$supp}
  # test_script_load: a configuration load is cut off after LV_CONFIG_LOAD_SECONDS of wall
  # time; under TSan its "allocation bomb" and "ordinary code" loads take longer than that
  # (about 10x release), so they fail on time, not on a report.
  exclude=${LEVEE_TSAN_EXCLUDE-'^unit\.test_script_load$'}
  if ! ctest --test-dir build-tsan --output-on-failure -j2 --timeout 900 -L 'unit|workers' \
       ${exclude:+-E "$exclude"} "$@"; then status=1; fi
fi
# Fuzz: every libFuzzer target of fuzz/ for a short run on its seed corpus (one line each with
# its executions per second). LEVEE_FUZZ_SECONDS sets the seconds per target; 0 skips the stage.
if [[ ${LEVEE_FUZZ_SECONDS:-15} != 0 ]]; then
  echo "=== fuzz build" >&2
  if ! scripts/fuzz.sh -t "${LEVEE_FUZZ_SECONDS:-15}"; then status=1; fi
fi
if [[ $status == 0 ]]; then echo "test.sh: all tests passed"; else echo "test.sh: FAILED" >&2; fi
exit $status
