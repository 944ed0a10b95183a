#!/usr/bin/env bash
# bench/slowread.sh: memory per slow reader, levee and nginx in the same run, both in front of
# one lv-testupstream origin that serves SIZE bytes (X-Test-Body-Size, default 1 MiB). For
# each proxy in turn: its RSS (levee: the process; nginx: master + worker), then N clients with
# a small SO_RCVBUF each send a GET for the body and read nothing; once the proxy's RSS and the
# origin's output stop growing, RSS again: KiB per slow reader = ΔRSS / N. Also per reader:
# what the origin sent (its /proc write counter), what nginx spooled to its temp files
# (default proxy_buffering), and the growth of the kernel's TCP buffer memory (system-wide,
# /proc/net/sockstat). On loopback the proxy's socket send buffer autotunes to ~4 MiB, so a
# 1 MiB response sits in the kernel, not in either proxy; SIZE=16777216 shows what each proxy
# itself keeps once the kernel buffers are full.
#   N=200 SIZE=1048576 RCVBUF=4096 PROXIES="levee nginx" OUT_DIR=dir BUILD=1 bench/slowread.sh
# BUILD=0 skips scripts/build.sh and uses the build/levee that is there.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200} RCVBUF=${RCVBUF:-4096} PROXIES=${PROXIES:-"levee nginx"}
SIZE=${SIZE:-1048576}
SETTLE_MAX=${SETTLE_MAX:-30}   # seconds to wait for RSS to stop growing before reading it anyway
BASE=${BASE_PORT:-18480}
ORIGIN_PORT=$BASE LEVEE_PORT=$((BASE + 1)) NGINX_PORT=$((BASE + 2))

# shellcheck source=bench/lib.sh
. bench/lib.sh   # table, port_up, stop_pid, cleanup, rss_kib, children
scripts/setup.sh --bench
[[ ${BUILD:-1} == 0 ]] || scripts/build.sh release >/dev/null
out=${OUT_DIR:-$(mktemp -d /tmp/levee-slowread.XXXX)}
mkdir -p "$out"
# N client sockets, N proxy sockets and N upstream ones: can pass a default limit of 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pids=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# The readers: N sockets with SO_RCVBUF set before connect (so the window stays small), each
# sends one GET for the 1 MiB body and then reads nothing. They hold their connections until
# the script kills them, or HOLD seconds pass (so a lost reader never lingers).
cat > "$out/readers.lua" <<'LUA'
local socket = require "socket"
local port, n, rcvbuf, size, hold, status_path =
  tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3]), arg[4], tonumber(arg[5]), arg[6]
local req = "GET /big HTTP/1.1\r\nHost: t\r\nX-Test-Body-Size: " .. size .. "\r\n\r\n"
local conns, failed = {}, 0
for _ = 1, n do
  local s = socket.tcp4()   -- tcp4(): the fd exists now, so setoption works before connect
  s:setoption("recv-buffer-size", rcvbuf)
  s:settimeout(5)
  if s:connect("127.0.0.1", port) and s:send(req) then
    conns[#conns + 1] = s
  else
    s:close()
    failed = failed + 1
  end
end
local f = assert(io.open(status_path, "w"))
f:write(("ready %d failed %d\n"):format(#conns, failed))
f:close()
socket.sleep(hold)
for _, s in ipairs(conns) do s:close() end
LUA

tcp_kib() { awk -v pg="$(getconf PAGESIZE)" '$1 == "TCP:" {for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) * pg / 1024}' /proc/net/sockstat; }
temp_bytes() {   # temp_bytes PID...: size of the open nginx temp files (unlinked, so du sees none)
  local p f sum=0
  for p in "$@"; do
    for f in /proc/"$p"/fd/*; do
      [[ $(readlink "$f" 2>/dev/null) == "$out/nginx/proxy_temp/"* ]] && sum=$((sum + $(stat -L -c %s "$f" 2>/dev/null || echo 0)))
    done
  done
  echo "$sum"
}
origin_sent() { awk '/^wchar:/ {print $2}' "/proc/$origin_pid/io"; }   # bytes it wrote, sockets included

build/lv-testupstream --listen "127.0.0.1:$ORIGIN_PORT" --name origin >"$out/origin.log" 2>&1 & origin_pid=$!
pids+=("$origin_pid")
port_up "$ORIGIN_PORT"

# nginx as the peer: proxy_pass with default proxy_buffering (8 small memory buffers, the rest
# of a response the client does not take goes to a temp file up to 1 GiB). user root: the
# worker must write its temp files in $out, which is 0700.
mkdir -p "$out/nginx"
cat > "$out/nginx-proxy.conf" <<CONF
$( ((EUID == 0)) && echo "user root;" )
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid $out/nginx/nginx.pid;
error_log $out/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $out/nginx/client_body;
  proxy_temp_path $out/nginx/proxy_temp;
  fastcgi_temp_path $out/nginx/fastcgi_temp;
  uwsgi_temp_path $out/nginx/uwsgi_temp;
  scgi_temp_path $out/nginx/scgi_temp;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
export ORIGIN_PORT EXTRA_PORT=$LEVEE_PORT

start_proxy() {   # start_proxy NAME: start it, warm it up; sets proxy_pid, port and procs
  case $1 in
    levee) build/levee -c bench/levee-slowread.lua >"$out/levee.log" 2>&1 & proxy_pid=$!; port=$LEVEE_PORT ;;
    nginx) nginx -c "$out/nginx-proxy.conf" -p "$out/nginx" >"$out/nginx/stdout.log" 2>&1 & proxy_pid=$!; port=$NGINX_PORT ;;
    *) echo "slowread: unknown proxy $1" >&2; exit 2 ;;
  esac
  pids+=("$proxy_pid")
  port_up "$port"
  # A few whole 1 MiB responses first, so buffers every response needs anyway are not
  # counted against the slow readers (and nginx's worker exists before we look for it).
  local i
  for i in 1 2 3; do
    curl -sf -o /dev/null -H "X-Test-Body-Size: $SIZE" "http://127.0.0.1:$port/big" ||
      { echo "slowread: $1: warm-up request $i failed" >&2; exit 1; }
  done
  # shellcheck disable=SC2207  # pids are plain numbers
  procs=("$proxy_pid" $(children "$proxy_pid"))
}

printf 'proxy\treaders\trss_before_kib\trss_after_kib\tkib_per_reader\torigin_kib_sent_per_reader\tnginx_temp_kib_per_reader\tkernel_tcp_kib_per_reader\tsettle_s\n' >"$out/slowread.tsv"
for proxy in $PROXIES; do
  start_proxy "$proxy"
  rss0=$(rss_kib "${procs[@]}") sent0=$(origin_sent) tcp0=$(tcp_kib)
  rm -f "$out/$proxy-readers.status"
  lua5.4 "$out/readers.lua" "$port" "$N" "$RCVBUF" "$SIZE" $((SETTLE_MAX + 60)) "$out/$proxy-readers.status" \
    2>"$out/$proxy-readers.err" & readers=$!
  pids+=("$readers")
  for ((i = 0; i < 600; i++)); do [[ -s $out/$proxy-readers.status ]] && break; sleep 0.05; done
  [[ -s $out/$proxy-readers.status ]] || { echo "slowread: $proxy: readers did not connect in 30 s" >&2; exit 1; }
  read -r _ ready _ failed <"$out/$proxy-readers.status"
  ((failed == 0)) || echo "slowread: $proxy: $failed readers could not connect" >&2
  # Settled: over the last second (5 samples, 0.2 s apart) RSS grew by at most 16 KiB (page
  # and allocator noise) and the origin wrote nothing, i.e. every pipe has stopped.
  t0=$(date +%s.%N) rss_hist=() sent_hist=() settle=-
  while :; do
    rss_hist+=("$(rss_kib "${procs[@]}")") sent_hist+=("$(origin_sent)")
    k=${#rss_hist[@]}
    if ((k >= 5)) && ((rss_hist[k - 1] - rss_hist[k - 5] <= 16)) && ((sent_hist[k - 1] == sent_hist[k - 5])); then
      settle=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'); break
    fi
    awk -v a="$t0" -v b="$(date +%s.%N)" -v m="$SETTLE_MAX" 'BEGIN {exit !(b - a > m)}' && break
    sleep 0.2
  done
  [[ $settle != - ]] || echo "slowread: $proxy: RSS still moving after ${SETTLE_MAX}s, reading it anyway" >&2
  rss1=$(rss_kib "${procs[@]}") sent1=$(origin_sent) tcp1=$(tcp_kib)
  temp=-
  [[ $proxy != nginx ]] || temp=$(temp_bytes "${procs[@]}" | awk -v n="$ready" '{printf "%.1f", $1 / 1024 / n}')
  awk -v p="$proxy" -v n="$ready" -v a="$rss0" -v b="$rss1" -v s="$((sent1 - sent0))" -v t="$temp" -v st="$settle" \
    -v k="$((tcp1 - tcp0))" 'BEGIN {printf "%s\t%d\t%d\t%d\t%.1f\t%.1f\t%s\t%.1f\t%s\n", p, n, a, b,
      n ? (b - a) / n : 0, n ? s / 1024 / n : 0, t, n ? k / n : 0, st}' \
    >>"$out/slowread.tsv"
  stop_pid "$readers"
  stop_pid "$proxy_pid"
done

echo "slow readers: N=$N, GET of $SIZE bytes each, client SO_RCVBUF $RCVBUF, nothing read"
table "$out/slowread.tsv" | tee "$out/slowread.txt"
echo "(RSS: levee process, nginx master + worker; origin sent: its write counter over the phase; raw data in $out)"
