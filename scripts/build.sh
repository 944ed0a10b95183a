#!/usr/bin/env bash
# build.sh [release|asan]: configure and build into build/ (release) or build-asan/ (ASan+UBSan).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
case $kind in
  release) dir=build; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=Debug -DLEVEE_SANITIZE=ON) ;;
  *) echo "usage: $0 [release|asan]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
