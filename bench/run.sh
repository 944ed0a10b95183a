#!/usr/bin/env bash
# bench/run.sh: levee beside nginx and HAProxy on this machine, in the same run, through
# ../shared/bench/peers.sh (levee is its EXTRA target), then levee's ratios to each peer.
#   ROUNDS=8 DURATION=2 BODIES="small 16k" PEERS="nginx haproxy" OUT_DIR=dir bench/run.sh
# Ratios, not absolute numbers, are what to quote: the machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/setup.sh --bench
scripts/build.sh release >/dev/null
peers=${PEERS_SH:-$root/../shared/bench/peers.sh}
[[ -x $peers ]] || { echo "bench: $peers not found" >&2; exit 2; }
out=${OUT_DIR:-$(mktemp -d /tmp/levee-bench.XXXX)}
config=${LEVEE_BENCH_CONFIG:-$root/bench/levee-bench.lua}
export OUT_DIR=$out PEERS=${PEERS:-"nginx haproxy"}
export EXTRA_NAME=levee EXTRA_URL=http://127.0.0.1:$(( ${BASE_PORT:-18080} + 9 ))
export EXTRA_CMD="$root/build/levee -c $config"
"$peers"
# Per round: levee req/s over each peer's req/s in the same round; medians over rounds.
echo
echo "== levee vs peers (median over rounds of same-round ratios; >1 means levee is faster / higher) =="
awk -F'\t' 'NR > 1 {rps[$1" "$2" "$3" "$4] = $5; p99[$1" "$2" "$3" "$4] = $7; k[$1" "$2] = 1; r[$3] = 1; t[$4] = 1}
  function med(a, n,   i, j, x) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) {x = a[j]; a[j] = a[j-1]; a[j-1] = x}
                                   return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
  END {
    for (kk in k) for (p in t) {
      if (p == "levee" || p == "direct") continue
      n = 0; delete a; delete b
      for (rr in r) { x = kk" "rr" levee"; y = kk" "rr" "p
        if ((x in rps) && (y in rps) && rps[y] > 0 && p99[y] > 0) { n++; a[n] = rps[x] / rps[y]; b[n] = p99[x] / p99[y] } }
      if (n) { split(kk, w, " "); printf "%-8s %-6s %-8s %12.3f %12.3f\n", w[1], w[2], p, med(a, n), med(b, n) }
    }
  }' "$out/rounds.tsv" | sort | { printf "%-8s %-6s %-8s %12s %12s\n" workers body peer "req/s ratio" "p99 ratio"; cat; } |
  tee "$out/levee-ratios.txt"
echo "(p99 ratio < 1 means levee's p99 latency is lower; raw data in $out)"
