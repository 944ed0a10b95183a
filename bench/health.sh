#!/usr/bin/env bash
# bench/health.sh: one bad server of two, levee and HAProxy in the same run. The upstream has
# two servers: a healthy nginx origin ("ok\n", bench_origin) and a free loopback port where
# nothing listens (every connect is refused). Through each proxy in turn, wrk -t1 -c4
# -d${DURATION}s --latency, ROUNDS rounds, the order reversed every other round. Each round
# starts every proxy fresh and loads it as soon as it listens, so each round includes the
# first contact with the bad server (the failures before it is ejected or marked DOWN).
# Per proxy: requests, client errors (non-2xx + socket errors), req/s, p99, and warn lines in
# its stderr; then the median same-round req/s ratio of each levee variant to HAProxy.
#   levee         bench/levee-health.lua: default policy (outlier ejection on, 5 failures)
#   levee-health  the same with health = { path = "/", interval = "1s" } (HEALTH=1)
#   haproxy       see the configuration below (checks every 2s, retries 3, option redispatch)
# Goal, reported and not asserted: levee's client errors per round <= 5
# (outlier.consecutive_failures) and levee's req/s >= HAProxy's.
#   ROUNDS=3 DURATION=3 PROXIES="levee levee-health haproxy" OUT_DIR=dir BUILD=1 bench/health.sh
# BUILD=0 skips scripts/build.sh and uses the build/levee that is there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-3} PROXIES=${PROXIES:-"levee levee-health haproxy"}
BASE=${BASE_PORT:-18580}
ORIGIN_PORT=$BASE LEVEE_PORT=$((BASE + 1)) LEVEE_HEALTH_PORT=$((BASE + 2)) HAPROXY_PORT=$((BASE + 3))
ADMIN_PORT=$((BASE + 4)) BAD_PORT=${BAD_PORT:-$((BASE + 9))}
# shellcheck source=bench/lib.sh disable=SC1091
. bench/lib.sh   # bench_origin, med

scripts/setup.sh --bench
[[ ${BUILD:-1} == 0 ]] || scripts/build.sh release >/dev/null
out=${OUT_DIR:-$(mktemp -d /tmp/levee-health.XXXX)}
mkdir -p "$out"
# shellcheck disable=SC2034  # read by bench_origin (bench/lib.sh)
work=$out   # bench_origin writes its nginx.conf, pid and error.log here
pids=()
trap cleanup EXIT
trap 'exit 130' INT TERM


# The bad server: a loopback port nobody listens on, so a connect is refused at once.
if (: </dev/tcp/127.0.0.1/"$BAD_PORT") 2>/dev/null; then
  echo "health: something listens on 127.0.0.1:$BAD_PORT; set BAD_PORT to a free port" >&2; exit 1
fi
bench_origin "$ORIGIN_PORT"
port_up "$ORIGIN_PORT"

# HAProxy as a typical configuration would have it: one thread (levee runs one), round robin,
# checks on both servers (option httpchk GET /, default inter 2s, fall 3, rise 2; a server
# starts at the edge of UP, so the bad one is DOWN at its first failed check, ~60 ms after
# start here), retries 3 with option redispatch (its default -1: the last retry goes to
# another server), timeout connect 5s (a retry on the same server waits min(timeout connect,
# 1s)). Server keep-alive and http-reuse safe are its defaults. No traffic log; its server
# state changes ("Server be/b is DOWN") are printed on stderr in the foreground (-db).
cat >"$out/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  balance roundrobin
  option httpchk GET /
  server a 127.0.0.1:$ORIGIN_PORT check
  server b 127.0.0.1:$BAD_PORT check
CONF
export ORIGIN_PORT BAD_PORT ADMIN_PORT LEVEE_PORT
if [[ " $PROXIES " == *" levee"* ]]; then
  for h in 0 1; do
    HEALTH=$h build/levee check bench/levee-health.lua >"$out/levee-check.log" 2>&1 ||
      { echo "health: levee refuses bench/levee-health.lua (HEALTH=$h):" >&2; cat "$out/levee-check.log" >&2; exit 1; }
  done
fi
if [[ " $PROXIES " == *" haproxy "* ]] && ! haproxy -c -q -f "$out/haproxy.cfg" >"$out/haproxy-check.log" 2>&1; then
  echo "health: haproxy refuses its configuration:" >&2; cat "$out/haproxy-check.log" >&2; exit 1
fi

start_proxy() {   # start_proxy NAME LOG: start it, wait until it listens; sets proxy_pid and port
  case $1 in
    levee) HEALTH=0 LEVEE_PORT=$LEVEE_PORT build/levee -c bench/levee-health.lua >"$2" 2>&1 & proxy_pid=$!
           port=$LEVEE_PORT ;;
    levee-health) HEALTH=1 LEVEE_PORT=$LEVEE_HEALTH_PORT build/levee -c bench/levee-health.lua >"$2" 2>&1 &
           proxy_pid=$!; port=$LEVEE_HEALTH_PORT ;;
    haproxy) haproxy -db -f "$out/haproxy.cfg" >"$2" 2>&1 & proxy_pid=$!; port=$HAPROXY_PORT ;;
    *) echo "health: unknown proxy $1" >&2; exit 2 ;;
  esac
  pids+=("$proxy_pid")
  port_up "$port"
}

# wrk's latency with its unit ("812.00us", "1.20ms", "2.00s") in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN {n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
  printf "%.3f\n", u == "us" ? n / 1000 : u == "s" ? n * 1000 : u == "m" ? n * 60000 : n}'; }

# One round of one proxy: start, load, stop; one TSV line in rounds.tsv.
printf 'round\tproxy\trequests\tnon2xx\tsock_errors\trps\tp99_ms\twarn_lines\tdown_lines\n' >"$out/rounds.tsv"
run_one() {   # run_one ROUND PROXY
  local r=$1 p=$2 log="$out/$2-r$1.log" wrk_out="$out/$2-r$1-wrk.txt" req rps non2xx sockerr p99 warn down
  start_proxy "$p" "$log"
  timeout $((DURATION + 30)) wrk -t1 -c4 -d"$DURATION"s --latency "http://127.0.0.1:$port/" >"$wrk_out" 2>&1 || true
  if [[ $p == levee* ]]; then
    curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/status" >"$out/$p-r$r-status.json" || true
  fi
  stop_pid "$proxy_pid"
  read -r req rps non2xx sockerr p99 < <(awk '/ requests in / {n = $1} /^Requests\/sec/ {r = $2} /Non-2xx/ {e = $NF}
    /Socket errors/ {gsub(",", ""); s = $4 + $6 + $8 + $10} /^ +99%/ {p = $2}
    END {printf "%d %s %d %d %s\n", n, r == "" ? 0 : r, e, s, p == "" ? "0ms" : p}' "$wrk_out")
  if [[ $p == haproxy ]]; then
    warn=$(grep -c -E '\[(WARNING|ALERT)\]' "$log" || true)
  else
    warn=$(grep -c -F 'levee[warn]' "$log" || true)
  fi
  down=$(grep -c -E 'is DOWN|ejected for|down after' "$log" || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$p" "$req" "$non2xx" "$sockerr" "$rps" "$(to_ms "$p99")" \
    "$warn" "$down" | tee -a "$out/rounds.tsv" |
    awk -F'\t' '{printf "round %s %-12s %7d requests, %d non-2xx, %d socket errors, %.0f req/s, p99 %.2f ms, %d warn lines\n",
                 $1, $2, $3, $4, $5, $6, $7, $8}'
}

read -ra order <<<"$PROXIES"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then seq_=("${order[@]}"); else seq_=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do seq_+=("${order[i]}"); done; fi
  for p in "${seq_[@]}"; do run_one "$r" "$p"; done
done

# The table: sums over rounds for counts, medians over rounds for rates, the median of the
# same-round req/s ratio to HAProxy.
{
  printf 'proxy\trounds\trequests\tclient_errors\tmax_errors_per_round\treq/s (median)\tp99_ms (median)\twarn_lines_per_round\treq/s vs haproxy (median)\n'
  for p in $PROXIES; do
    rows=$(awk -F'\t' -v p="$p" '$2 == p' "$out/rounds.tsv")
    [[ -n $rows ]] || continue
    n=$(grep -c . <<<"$rows")
    sums=$(awk -F'\t' '{q += $3; e += $4 + $5; if ($4 + $5 > m) m = $4 + $5} END {printf "%d\t%d\t%d", q, e, m}' <<<"$rows")
    rps=$(cut -f6 <<<"$rows" | med)
    p99=$(cut -f7 <<<"$rows" | med)
    warns=$(cut -f8 <<<"$rows" | paste -sd/ -)
    ratio=-
    if [[ $p != haproxy && " $PROXIES " == *" haproxy "* ]]; then
      ratio=$(awk -F'\t' -v p="$p" '$2 == p {a[$1] = $6} $2 == "haproxy" {h[$1] = $6}
        END {for (r in a) if (h[r] > 0) print a[r] / h[r]}' "$out/rounds.tsv" | med)
      ratio=$(printf '%.3f' "$ratio")
    fi
    printf '%s\t%s\t%s\t%.0f\t%.2f\t%s\t%s\n' "$p" "$n" "$sums" "$rps" "$p99" "$warns" "$ratio"
  done
} >"$out/health.tsv"

echo
echo "one bad server of two (127.0.0.1:$BAD_PORT refuses), wrk -t1 -c4 -d${DURATION}s, $ROUNDS rounds, each proxy fresh per round"
table "$out/health.tsv" | tee "$out/health.txt"
# The goal, reported (not asserted): per levee variant, worst round's client errors <= 5
# (outlier.consecutive_failures) and the median req/s ratio to HAProxy >= 1.
awk -F'\t' 'NR > 1 && $1 ~ /^levee/ {
    printf "goal %s: client errors per round <= 5: %s (worst round %d); req/s >= haproxy: %s (ratio %s)\n", $1,
      $5 <= 5 ? "met" : "NOT met", $5, $9 == "-" ? "n/a" : ($9 >= 1 ? "met" : "NOT met"), $9 }' \
  "$out/health.tsv" | tee -a "$out/health.txt"
echo "(client_errors = wrk non-2xx + socket errors, summed over rounds; warn_lines_per_round: levee[warn] lines, or HAProxy [WARNING]/[ALERT] lines, in each round's stderr; raw data in $out)"
echo "(p99: wrk corrects for coordinated omission, so a single stall of one connection (HAProxy's 1 s retry turn-around) weighs like many slow requests; see Max in the *-wrk.txt files)"
