#!/usr/bin/env bash
# build.sh [release|asan|tsan|fuzz]: configure and build into build/ (release), build-asan/
# (ASan+UBSan), build-tsan/ (ThreadSanitizer) or build-fuzz/ (clang, the libFuzzer targets of
# fuzz/ only; scripts/fuzz.sh runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
targets=()
case $kind in
  release) dir=build; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=Debug -DLEVEE_SANITIZE=ON) ;;
  tsan) dir=build-tsan; flags=(-DCMAKE_BUILD_TYPE=Debug -DLEVEE_TSAN=ON) ;;
  fuzz) dir=build-fuzz; flags=(-DCMAKE_BUILD_TYPE=Debug -DLEVEE_FUZZ=ON); targets=(--target fuzzers)
        export CC=clang ;;
  *) echo "usage: $0 [release|asan|tsan|fuzz]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)" "${targets[@]}"
