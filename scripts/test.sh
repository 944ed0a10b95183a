#!/usr/bin/env bash
# The one test command: install what is missing, build release and ASan+UBSan, run every test
# (C unit tests, busted unit specs, busted integration specs against the real binary) in both.
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
if [[ $status == 0 ]]; then echo "test.sh: all tests passed"; else echo "test.sh: FAILED" >&2; fi
exit $status
