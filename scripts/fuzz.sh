#!/usr/bin/env bash
# fuzz.sh [TARGET...] [-t SECONDS] [-j JOBS] [--merge]: build build-fuzz/ (scripts/build.sh fuzz)
# and run each libFuzzer target of fuzz/ (request, body, response, config, fault, trace; default all) for
# SECONDS (default 300) on a copy of its seed corpus fuzz/corpus/TARGET, so the repository
# corpus is left alone. --merge minimizes what a run found back into fuzz/corpus/TARGET.
# -j runs that many targets at once. Prints executions per second per target at the end;
# exits non-zero if any target crashed, leaked, timed out or ran out of memory. Crashing
# inputs are kept in build-fuzz/artifacts/RUN/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(request body response config fault trace)
secs=300 jobs=1 merge=0 targets=()
usage() { sed -n '2,8s/^# \{0,1\}//p' "$0"; }
while (($#)); do
  case $1 in
    -t) secs=${2:?-t needs seconds}; shift 2 ;;
    -j) jobs=${2:?-j needs a number}; shift 2 ;;
    --merge) merge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    fuzz_*) targets+=("${1#fuzz_}"); shift ;;
    request | body | response | config | fault | trace) targets+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
((${#targets[@]})) || targets=("${ALL[@]}")
[[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || { echo "fuzz.sh: -t wants whole seconds" >&2; exit 2; }

# Longest input per target: past the limits the parsers enforce (32 KiB request head, 64 KiB
# response head) without spending the run on huge inputs.
declare -A MAXLEN=([request]=40000 [body]=8192 [response]=70000 [config]=16384 [fault]=4096 [trace]=1024)

scripts/build.sh fuzz >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/levee-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
run=$(date +%Y%m%d-%H%M%S)

# Runs one target; its summary line goes to $work/TARGET.result, libFuzzer's exit status to
# $work/TARGET.rc.
run_target() {
  local t=$1 bin=build-fuzz/fuzz/fuzz_$1 dir=$work/$1 art=build-fuzz/artifacts/$run/$1
  echo "fuzz.sh: fuzz_$t for ${secs}s" >&2
  mkdir -p "$dir/corpus" "$art"
  cp -r fuzz/corpus/"$t"/. "$dir/corpus/" 2>/dev/null || true
  # The example configurations seed the config target too (not copied into the repository).
  [[ $t == config ]] && cp examples/*.lua "$dir/corpus/"
  local dict=() rc=0 t0=$SECONDS elapsed
  [[ -f fuzz/$t.dict ]] && dict=(-dict="fuzz/$t.dict")
  "$bin" "$dir/corpus" "${dict[@]}" -max_len="${MAXLEN[$t]}" -max_total_time="$secs" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/" \
    >"$dir/log" 2>&1 || rc=$?
  elapsed=$((SECONDS - t0))
  # Executions per second: libFuzzer's final statistics, else its last status line.
  local eps runs
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -1)
  [[ -n $eps ]] || eps=$(grep -o 'exec/s: [0-9]*' "$dir/log" | tail -1 | grep -o '[0-9]*$' || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  local verdict=ok
  if ((rc != 0)); then
    verdict="FAILED (exit $rc)"
    grep -q 'ERROR: libFuzzer: timeout' "$dir/log" && verdict="FAILED (timeout)"
    grep -q 'ERROR: libFuzzer: out-of-memory' "$dir/log" && verdict="FAILED (out of memory)"
    grep -q 'ERROR: LeakSanitizer' "$dir/log" && verdict="FAILED (leak)"
    grep -q -e 'ERROR: AddressSanitizer' -e 'runtime error:' "$dir/log" && verdict="FAILED (crash)"
    grep -q -e '\*\*\* fuzz check failed' -e 'whole and split input' "$dir/log" &&
      verdict="FAILED (check)"
    {
      echo "=== fuzz_$t: $verdict; the end of its log:"
      grep -v -e '^#[0-9]' -e '^INFO:' "$dir/log" | tail -40
      ls "$art"/* 2>/dev/null | sed 's/^/reproducer: /' || true
    } >&2
  fi
  if ((merge)) && ((rc == 0)); then
    local before after
    before=$(find fuzz/corpus/"$t" -type f | wc -l)
    "$bin" -merge=1 -max_len="${MAXLEN[$t]}" -timeout=10 fuzz/corpus/"$t" "$dir/corpus" \
      >"$dir/merge.log" 2>&1 || verdict="$verdict, merge failed"
    after=$(find fuzz/corpus/"$t" -type f | wc -l)
    verdict="$verdict, +$((after - before)) corpus files"
  fi
  printf 'fuzz_%-9s %6s s %10s runs %8s exec/s  %s\n' "$t" "$elapsed" "${runs:-?}" \
    "${eps:-?}" "$verdict" >"$work/$t.result"
  echo "$rc" >"$work/$t.rc"
}

for t in "${targets[@]}"; do
  if ((jobs > 1)); then
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    run_target "$t" &
  else
    run_target "$t"
  fi
done
wait

status=0
for t in "${targets[@]}"; do
  cat "$work/$t.result" 2>/dev/null || echo "fuzz_$t: no result"
  [[ $(cat "$work/$t.rc" 2>/dev/null) == 0 ]] || status=1
done
rmdir build-fuzz/artifacts/"$run"/* build-fuzz/artifacts/"$run" 2>/dev/null || true
if ((status)); then echo "fuzz.sh: FAILED" >&2; fi
exit $status
